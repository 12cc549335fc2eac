"""ingest_dicom: geometry checks and sorting, HU values, resizing, compression, real files, privacy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from ingest_dicom import ingest_dicom, main, resize_frames
from parquet_io import read_metadata, read_tables
from pseudonym import record_pseudonym, subject_pseudonym

KEY = b"k" * 64
PATIENT_ID = "PAT-SECRET-0042"
PATIENT_NAME = "Doe^Janet"
BIRTH_DATE = "19560314"


def ct_slice(path: Path, *, series_uid: str, z: float = 0.0, instance: int = 1, rows: int = 8, cols: int = 8,
             stored: np.ndarray | None = None, orientation=(1, 0, 0, 0, 1, 0), position=None,
             spacing=(0.5, 0.5), slope: float = 1.0, intercept: float = -1024.0, patient_id: str = PATIENT_ID,
             **extra) -> Path:
    """Write a tiny, valid CT slice (int16 stored values) with the given geometry."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient_id, PATIENT_NAME, BIRTH_DATE
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", series_uid
    ds.Modality, ds.InstanceNumber = "CT", instance
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = list(position if position is not None else (0.0, 0.0, z))
    ds.PixelSpacing, ds.SliceThickness = list(spacing), 2.0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    values = stored if stored is not None else np.full((rows, cols), int(z) + 100)
    ds.PixelData = np.asarray(values, dtype=np.int16).tobytes()
    for keyword, value in extra.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def run(tmp_path: Path, image_size: int = 8, shards: int = 2) -> tuple[dict, list[dict], list[dict]]:
    """Ingest tmp_path/in; check the output contract; return manifest, image rows, quarantine rows."""
    out = tmp_path / "out"
    manifest = ingest_dicom(tmp_path / "in", KEY, out, shards, image_size)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
    parts = [out / f"part-{k}.parquet" for k in range(shards)]
    assert all(p.exists() for p in parts)
    table = read_tables(parts)
    assert manifest["rows_written"] == table.num_rows
    assert read_metadata(parts[0])["params"]["image_size"] == image_size
    for k, part in enumerate(parts):  # every row sits in the shard of its subject
        assert all(s % shards == k for s in pq.read_table(part).column("subject_id").to_pylist())
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    return manifest, table.to_pylist(), quarantine


def reasons(quarantine: list[dict]) -> dict[str, str]:
    return {row["source"]: row["reason"] for row in quarantine}


def test_slices_sorted_by_position_not_instance_number(tmp_path):
    for i, (z, instance) in enumerate([(10.0, 1), (0.0, 4), (30.0, 2), (20.0, 3)]):
        ct_slice(tmp_path / "in" / f"IM{i}", series_uid="1.2.3.4.5", z=z, instance=instance)
    manifest, rows, quarantine = run(tmp_path)
    assert (manifest["records_in"], manifest["records_out"], quarantine) == (4, 4, [])
    assert [r["slice_index"] for r in rows] == [0, 1, 2, 3]
    assert [r["position_mm"] for r in rows] == [0.0, 10.0, 20.0, 30.0]
    assert [r["hu"][0] for r in rows] == [100 - 1024, 110 - 1024, 120 - 1024, 130 - 1024]
    assert {r["n_slices"] for r in rows} == {4} and {r["slice_spacing_mm"] for r in rows} == {10.0}
    assert rows[0]["subject_id"] == subject_pseudonym(PATIENT_ID, KEY)
    assert rows[0]["record_id"] == record_pseudonym("1.2.3.4.5", KEY, kind="series")


def test_sagittal_series_sorted_along_its_normal(tmp_path):
    # rows along +y, columns along -z: the normal is -x, so the slice at x=+5 comes first
    for i, x in enumerate([0.0, 5.0, -5.0]):
        ct_slice(tmp_path / "in" / f"IM{i}", series_uid="1.2.9", orientation=(0, 1, 0, 0, 0, -1),
                 position=(x, 0.0, 0.0), stored=np.full((8, 8), 100 + int(x)), instance=1 + i)
    _, rows, _ = run(tmp_path)
    assert [r["position_mm"] for r in rows] == [-5.0, 0.0, 5.0]
    assert [r["hu"][0] for r in rows] == [105 - 1024, 100 - 1024, 95 - 1024]


def test_rescale_slope_and_intercept_give_hu(tmp_path):
    stored = np.arange(64).reshape(8, 8) - 10
    ct_slice(tmp_path / "in" / "a.dcm", series_uid="1.2.7", stored=stored, slope=2.0, intercept=-1000.0)
    _, rows, _ = run(tmp_path, image_size=8)
    hu = np.array(rows[0]["hu"], dtype=np.float32).reshape(8, 8)
    np.testing.assert_array_equal(hu, stored * 2.0 - 1000.0)
    assert (rows[0]["rows"], rows[0]["cols"], rows[0]["modality"]) == (8, 8, "CT")


def test_padding_pixels_take_the_lowest_real_value(tmp_path):
    stored = np.full((8, 8), 1000)
    stored[0, :] = -2000
    stored[1, 1] = 24
    ct_slice(tmp_path / "in" / "a.dcm", series_uid="1.2.7", stored=stored, PixelPaddingValue=-2000)
    _, rows, _ = run(tmp_path, image_size=8)
    hu = np.array(rows[0]["hu"]).reshape(8, 8)
    assert hu[0].tolist() == [24 - 1024.0] * 8 and hu.min() == 24 - 1024.0


def test_resize_adjusts_spacing_and_matches_torch_antialiased_bilinear(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    stored = rng.integers(-500, 1500, size=(16, 12))
    ct_slice(tmp_path / "in" / "a.dcm", series_uid="1.2.8", rows=16, cols=12, stored=stored,
             spacing=(0.5, 0.75))
    _, rows, _ = run(tmp_path, image_size=8)
    assert rows[0]["pixel_spacing_mm"] == [1.0, 1.125]
    hu = np.array(rows[0]["hu"], dtype=np.float32).reshape(8, 8)
    expected = torch.nn.functional.interpolate(torch.tensor(stored - 1024.0)[None, None], size=(8, 8),
                                               mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_allclose(hu, expected[0, 0].numpy(), rtol=1e-4, atol=1e-2)
    up = torch.nn.functional.interpolate(torch.tensor(stored, dtype=torch.float64)[None, None], size=(20, 20),
                                         mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize_frames(stored[None].astype(float), 20)[0], up[0, 0].numpy(), atol=1e-3)


def test_rle_compressed_series_decodes_like_uncompressed(tmp_path):
    stored = np.arange(64).reshape(8, 8) * 7 - 200
    plain = ct_slice(tmp_path / "plain" / "a.dcm", series_uid="1.2.10", stored=stored)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "in" / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    _, rows, quarantine = run(tmp_path)
    assert quarantine == []
    np.testing.assert_array_equal(np.array(rows[0]["hu"]).reshape(8, 8), stored - 1024.0)


def _multiframe_without_groups(path: Path) -> None:
    ct_slice(path, series_uid="1.2.60", stored=np.zeros((3, 8, 8)), NumberOfFrames=3)


def _rgb(path: Path) -> None:
    ct_slice(path, series_uid="1.2.61", stored=np.zeros((8, 8, 3)), SamplesPerPixel=3,
             PhotometricInterpretation="RGB", PlanarConfiguration=0, BitsAllocated=16)


BAD_FILES = {
    "notes.txt": (lambda p: p.write_text("not dicom at all"), None),
    "DICOMDIR": (lambda p: shutil.copy(get_testdata_file("DICOMDIR"), p),
                 "DICOMDIR (media directory index), not an image"),
    "nopid.dcm": (lambda p: ct_slice(p, series_uid="1.2.50", patient_id=""), "missing PatientID"),
    "noseries.dcm": (lambda p: ct_slice(p, series_uid="1.2.51", SeriesInstanceUID=None),
                     "missing SeriesInstanceUID"),
    "nospacing.dcm": (lambda p: ct_slice(p, series_uid="1.2.52", PixelSpacing=None), "missing PixelSpacing"),
    "seg.dcm": (lambda p: ct_slice(p, series_uid="1.2.53", Modality="SEG"), "Modality SEG is not an image"),
    "rgb.dcm": (_rgb, "not a greyscale image (SamplesPerPixel=3, PhotometricInterpretation=RGB)"),
    "cine.dcm": (_multiframe_without_groups,
                 "multi-frame not supported yet: 3 frames without per-frame functional groups"),
    "badpos.dcm": (lambda p: ct_slice(p, series_uid="1.2.54", ImagePositionPatient=["1", "2"]),
                   "malformed ImagePositionPatient (expected 3 numbers)"),
    "halfgeom.dcm": (lambda p: ct_slice(p, series_uid="1.2.55", ImagePositionPatient=None),
                     "ImageOrientationPatient and ImagePositionPatient must both be present or both absent"),
}


def test_bad_files_are_quarantined_with_their_reason(tmp_path):
    (tmp_path / "in" / "deep").mkdir(parents=True)
    for name, (make, _) in BAD_FILES.items():
        make(tmp_path / "in" / "deep" / name)
    ct_slice(tmp_path / "in" / "good.dcm", series_uid="1.2.99")
    manifest, rows, quarantine = run(tmp_path)
    assert (manifest["records_in"], manifest["records_out"]) == (len(BAD_FILES) + 1, 1)
    assert len(rows) == 1 and {q["locator"] for q in quarantine} == {"file"}
    got = reasons(quarantine)
    for name, (_, reason) in BAD_FILES.items():
        if reason is None:
            assert got[f"deep/{name}"].startswith("not a DICOM file: ") and "DICM" in got[f"deep/{name}"]
        else:
            assert got[f"deep/{name}"] == reason


def _series(tmp_path: Path, uid: str, *slices: dict) -> list[str]:
    names = []
    for i, kwargs in enumerate(slices):
        ct_slice(tmp_path / "in" / uid / f"IM{i}", series_uid=uid, instance=i + 1, **kwargs)
        names.append(f"{uid}/IM{i}")
    return names


def test_incoherent_series_are_refused_whole(tmp_path):
    expected = {}
    for names, reason in [
        (_series(tmp_path, "1.1", {"z": 0}, {"z": 5, "orientation": (1, 0, 0, 0, 0, -1)}),
         "slices disagree on ImageOrientationPatient (a localizer in the series?)"),
        (_series(tmp_path, "1.2", {"z": 0}, {"z": 5, "rows": 16, "cols": 16}),
         "slices disagree on Rows/Columns (8x8, 16x16)"),
        (_series(tmp_path, "1.3", {"z": 0}, {"z": 5, "spacing": (0.7, 0.7)}),
         "slices disagree on PixelSpacing ([0.5, 0.5] vs [0.7, 0.7] mm)"),
        (_series(tmp_path, "1.4", {"z": 0}, {"z": 5}, {"z": 5}),
         "duplicate slice positions: 1 of 3 slices repeat the position of another"),
        (_series(tmp_path, "1.5", {"z": 0}, {"z": 5, "patient_id": "OTHER-PATIENT"}),
         "slices of the series disagree on PatientID"),
        (_series(tmp_path, "1.6", {"ImagePositionPatient": None, "ImageOrientationPatient": None},
                 {"ImagePositionPatient": None, "ImageOrientationPatient": None, "InstanceNumber": 1}),
         "cannot order slices: no ImagePositionPatient and InstanceNumber missing or repeated"),
        (_series(tmp_path, "1.7", {"z": 0}, {"z": 5, "PixelData": b"\x00\x01"}),
         "pixel data of 1.7/IM1 could not be decoded: "),
    ]:
        expected.update({name: reason for name in names})
    _series(tmp_path, "1.8", {"z": 0}, {"z": 5})
    manifest, rows, quarantine = run(tmp_path)
    assert (manifest["records_in"], manifest["records_out"], len(rows)) == (len(expected) + 2, 2, 2)
    assert manifest["series_quarantined"] == 7 and manifest["series_out"] == 1
    got = reasons(quarantine)
    for name, reason in expected.items():
        assert got[name].startswith(reason) if reason.endswith(": ") else got[name] == reason, name
    locators = {q["locator"] for q in quarantine if q["source"].startswith("1.4/")}
    assert locators == {"series " + record_pseudonym("1.4", KEY, kind="series")}


def test_corrupt_jpeg2000_quarantines_its_series_with_the_decoders_reason(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:200] + b"\x00" * 40])  # codestream cut short, padded with zeros
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "mr.dcm")
    manifest, rows, quarantine = run(tmp_path)
    assert (rows, manifest["records_quarantined"]) == ([], 1)
    reason = quarantine[0]["reason"]
    assert reason.startswith("pixel data of mr.dcm could not be decoded: RuntimeError: Unable to decode")
    assert "pylibjpeg" in reason  # the plugin's own message is kept


def test_series_without_geometry_falls_back_to_instance_number(tmp_path):
    for i, instance in enumerate([3, 1, 2]):
        ct_slice(tmp_path / "in" / f"IM{i}", series_uid="1.2.20", instance=instance, z=10 * instance,
                 ImagePositionPatient=None, ImageOrientationPatient=None)
    _, rows, quarantine = run(tmp_path)
    assert quarantine == []
    assert [r["hu"][0] for r in rows] == [110 - 1024, 120 - 1024, 130 - 1024]
    assert [r["position_mm"] for r in rows] == [None, None, None]
    assert {r["slice_spacing_mm"] for r in rows} == {2.0}  # SliceThickness when no positions exist


def test_real_pydicom_files_ingest_or_quarantine_with_reason(tmp_path):
    names = {"CT_small.dcm": None, "MR_small_RLE.dcm": None, "693_J2KI.dcm": None,
             "eCT_Supplemental.dcm": None, "rtdose.dcm": "Modality RTDOSE is not an image",
             "SC_rgb.dcm": "not a greyscale image (SamplesPerPixel=3, PhotometricInterpretation=RGB)",
             "OBXXXX1A_2frame.dcm": "not a greyscale image (SamplesPerPixel=1, "
                                    "PhotometricInterpretation=PALETTE COLOR)",
             "test-SR.dcm": "missing PatientID", "no_meta.dcm": "not a DICOM file"}
    (tmp_path / "in").mkdir()
    for name in names:
        shutil.copy(get_testdata_file(name), tmp_path / "in" / name)
    manifest, rows, quarantine = run(tmp_path, image_size=16)
    got = reasons(quarantine)
    assert manifest["records_out"] == 4 and manifest["records_quarantined"] == 5
    for name, reason in names.items():
        if reason is None:
            assert name not in got
        else:
            assert got[name].startswith(reason)
    ct_small_subject = subject_pseudonym(pydicom.dcmread(get_testdata_file("CT_small.dcm")).PatientID, KEY)
    ct_small = [r for r in rows if r["subject_id"] == ct_small_subject]
    enhanced = [r for r in rows if r["n_slices"] == 2]
    assert [r["position_mm"] for r in enhanced] == [149.0, 159.0]  # frames placed by their functional groups
    assert min(min(r["hu"]) for r in enhanced) == -1024.0  # shared PixelValueTransformation intercept
    hu = np.array(ct_small[0]["hu"])
    assert len(ct_small) == 1 and hu.size == 16 * 16
    assert -1000 < hu.min() < -500 and 500 < hu.max() < 1200  # air and dense tissue in Hounsfield units


def test_no_raw_identifier_in_any_output_byte_or_log(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    series_uid = "1.2.826.0.1.3680043.8.498.12345"
    for i in range(2):
        ct_slice(tmp_path / "in" / f"IM{i}", series_uid=series_uid, z=float(i))
    ct_slice(tmp_path / "in" / "bad", series_uid=series_uid + ".9", rows=4, cols=4, PixelData=b"\x00")
    main(["--input", str(tmp_path / "in"), "--salt-file", str(tmp_path / "salt"), "--out-dir",
          str(tmp_path / "out"), "--shards", "3", "--image-size", "4"])
    secrets = [PATIENT_ID, "Janet", BIRTH_DATE, series_uid, "1.2.3.4"]
    texts = [caplog.text]
    for path in (tmp_path / "out").iterdir():
        texts.append(path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts.append(str(table.to_pylist()) + str(table.schema.metadata))
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "ingest image: records_in=3 records_out=2 records_quarantined=1 rows_written=2" in caplog.text
