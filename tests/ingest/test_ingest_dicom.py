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

from ingest_dicom import main
from mmhealth.core.parquet_io import read_metadata, read_tables
from mmhealth.core.pseudonym import record_pseudonym, subject_pseudonym
from mmhealth.ingest import common, dicom_pixels
from mmhealth.ingest.dicom import ingest_dicom
from mmhealth.ingest.dicom_pixels import FrameResizer, resize_frames
from mmhealth.ingest.dicom_series import HEADER_ALLOW_LIST, header_value

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
    manifest = ingest_dicom(tmp_path / "in", KEY, out, shards, image_size, source_map=tmp_path / "names.tsv")
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
    manifest, quarantine = plain(manifest, quarantine, tmp_path / "names.tsv", tmp_path / "in")
    return manifest, table.to_pylist(), quarantine


def plain(manifest: dict, quarantine: list[dict], names_file: Path, root: Path) -> tuple[dict, list[dict]]:
    """Manifest and quarantine with inputs named by their paths again through the source map (staging),
    after checking that the outputs name no input path and the map covers every name."""
    names = common.read_source_maps([names_file])
    paths = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(manifest["inputs"]) <= set(names) and set(names.values()) <= paths
    text = json.dumps([manifest, quarantine])
    assert not [p for p in paths if p in text]
    manifest = {**manifest, "inputs": {names[k]: v for k, v in manifest["inputs"].items()}}
    quarantine = [{**row, "source": names[row["source"]], "reason": common.unname(row["reason"], names)}
                  for row in quarantine]
    return manifest, quarantine


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


def shard_cli(tmp_path: Path, shards: int = 3, image_size: int = 4) -> list[Path]:
    """Run the per-shard CLI for every shard over tmp_path/in; return the part paths."""
    files = [str(p) for p in sorted((tmp_path / "in").rglob("*")) if p.is_file()]
    for k in range(shards):
        main(["--input", str(tmp_path / "in"), "--files", *files, "--shard", str(k), "--shards", str(shards),
              "--salt-file", str(tmp_path / "salt"), "--out-part", str(tmp_path / "out" / f"part-{k}.parquet"),
              "--quarantine", str(tmp_path / "out" / f"quarantine-{k}.parquet"),
              "--manifest", str(tmp_path / "out" / f"manifest-{k}.json"), "--image-size", str(image_size)])
    return [tmp_path / "out" / f"part-{k}.parquet" for k in range(shards)]


def test_no_raw_identifier_in_any_output_byte_or_log(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    series_uid = "1.2.826.0.1.3680043.8.498.12345"
    for i in range(2):
        ct_slice(tmp_path / "in" / f"IM{i}", series_uid=series_uid, z=float(i),
                 InstitutionName="Secret General Hospital", StudyDate="20200314",
                 ReferringPhysicianName="Dr^Who")
    ct_slice(tmp_path / "in" / "bad", series_uid=series_uid + ".9", rows=4, cols=4, PixelData=b"\x00")
    shard_cli(tmp_path)
    secrets = [PATIENT_ID, "Janet", BIRTH_DATE, series_uid, "1.2.3.4", "Secret General", "20200314", "Who"]
    texts = [caplog.text]
    for path in (tmp_path / "out").iterdir():
        texts.append(path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts.append(str(table.to_pylist()) + str(table.schema.metadata))
    for text in texts:
        for secret in secrets:
            assert secret not in text
    owner = subject_pseudonym(PATIENT_ID, (tmp_path / "salt").read_text().strip().encode()) % 3
    assert "ingest image: records_in=3 records_out=2 records_quarantined=1 rows_written=2" in caplog.text
    manifest = json.loads((tmp_path / "out" / f"manifest-{owner}.json").read_text())
    assert (manifest["shard"], manifest["records_out"], manifest["series_quarantined"]) == (owner, 2, 1)


def test_output_depends_only_on_the_allow_list(tmp_path):
    """Changing every attribute that is not allow-listed changes no output byte of the image rows."""
    uid = "1.2.40"
    for i in range(3):
        ct_slice(tmp_path / "a" / "in" / f"IM{i}", series_uid=uid, z=2.0 * i)
        ct_slice(tmp_path / "b" / "in" / f"IM{i}", series_uid=uid, z=2.0 * i, PatientName="Other^Name",
                 PatientBirthDate="19990101", StudyInstanceUID="9.9.9", StudyDate="20010101",
                 InstitutionName="Elsewhere", Manufacturer="ACME", PatientSex="M", AccessionNumber="A123")
    _, rows_a, _ = run(tmp_path / "a")
    _, rows_b, _ = run(tmp_path / "b")
    assert rows_a == rows_b and len(rows_a) == 3


def test_header_values_come_only_from_the_allow_list(tmp_path):
    ds = pydicom.dcmread(ct_slice(tmp_path / "a.dcm", series_uid="1.2.41"))
    assert header_value(ds, "Rows") == 8 and header_value(ds, "PixelSpacing") == [0.5, 0.5]
    assert header_value(ds, "ImageType") is None  # allow-listed, absent
    with pytest.raises(KeyError, match="PatientName is not on the de-identification allow-list"):
        header_value(ds, "PatientName")
    assert {"PatientName", "PatientBirthDate", "StudyDate", "InstitutionName"}.isdisjoint(HEADER_ALLOW_LIST)


def test_multiframe_cine_without_geometry_keeps_stored_frame_order(tmp_path):
    frames = np.stack([np.full((8, 8), 10 * f) for f in range(3)])
    ct_slice(tmp_path / "in" / "cine.dcm", series_uid="1.2.42", stored=frames, NumberOfFrames=3,
             ImagePositionPatient=None, ImageOrientationPatient=None)
    manifest, rows, quarantine = run(tmp_path)
    assert quarantine == [] and manifest["records_out"] == 1
    assert [r["hu"][0] for r in rows] == [-1024.0, -1014.0, -1004.0]
    assert [r["slice_index"] for r in rows] == [0, 1, 2] and {r["n_slices"] for r in rows} == {3}


@pytest.mark.parametrize("signed", [0, 1])
def test_bits_above_bits_stored_carry_no_value(tmp_path, signed):
    """12 of 16 bits stored: set upper bits are cleared (sign-extending signed values), clean files pass as is."""
    clean = np.arange(64).reshape(8, 8) - 32 * signed
    dirty = (clean & 0x0FFF) | 0x5000
    for z, stored in enumerate([clean, dirty]):
        ct_slice(tmp_path / "in" / f"IM{z}", series_uid="1.2.44", z=2.0 * z, stored=stored, BitsStored=12,
                 HighBit=11, PixelRepresentation=signed)
    _, rows, quarantine = run(tmp_path)
    assert quarantine == [] and [r["hu"] for r in rows] == [(clean - 1024.0).ravel().tolist()] * 2


def test_frame_resizer_batches_resize_like_single_frames(monkeypatch):
    """Frames resized through the reused buffers (across shape changes, a file larger than a chunk and than a
    batch, frames already of the output size) come out as each frame resized alone, then rescaled."""
    monkeypatch.setattr(dicom_pixels, "SCRATCH_BYTES", 2 * 16 * 16 * 4)  # rows of two 16x16 frames at a time
    monkeypatch.setattr(dicom_pixels, "BATCH_BYTES", 3 * 8 * 16 * 4)  # columns of three 8x16 frames at a time
    rng = np.random.default_rng(1)
    files = [rng.integers(-1000, 2000, size=shape, dtype=np.int16)
             for shape in [(1, 16, 16), (2, 16, 16), (5, 16, 16), (1, 12, 20), (2, 8, 8), (1, 16, 16)]]
    resizer = FrameResizer(8)
    for i, stored in enumerate(files):
        resizer.add([(i, f) for f in range(len(stored))], stored, np.full(len(stored), 2.0, np.float32),
                    np.full(len(stored), -1024.0, np.float32))
    resizer.flush()
    for i, stored in enumerate(files):
        for f, frame in enumerate(stored):
            expected = resize_frames(frame[None].astype(np.float32), 8)[0] * 2.0 - 1024.0
            np.testing.assert_allclose(resizer.results[(i, f)], expected, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("patient_id, charset", [("PAT-0042 ", None), ("  lead", None), ("A\\B", None),
                                                 ("Müller", "ISO_IR 100"), ("Kim", "ISO 2022 IR 149")])
def test_patient_id_reads_as_pydicom_decodes_it(tmp_path, patient_id, charset):
    extra = {} if charset is None else {"SpecificCharacterSet": charset}
    path = ct_slice(tmp_path / "a.dcm", series_uid="1.2.45", patient_id=patient_id, **extra)
    fast, slow = (pydicom.dcmread(path, stop_before_pixels=True) for _ in range(2))
    assert header_value(fast, "PatientID") == slow.PatientID


@pytest.mark.parametrize("rows, cols, size", [(256, 256, 64), (512, 256, 64), (300, 260, 64), (20, 16, 8),
                                              (8, 5, 20), (130, 70, 64)])
def test_banded_resize_equals_the_dense_weight_products(rows, cols, size):
    """Blocks merged into strided runs (whole-number shrinks) or not (others) give the dense product."""
    frames = np.random.default_rng(2).integers(-1000, 2000, size=(3, rows, cols)).astype(np.float32)
    dense = np.einsum("or,nrc,pc->nop", dicom_pixels.resample_matrix(rows, size), frames,
                      dicom_pixels.resample_matrix(cols, size))
    np.testing.assert_allclose(resize_frames(frames, size), dense, rtol=1e-5, atol=1e-3)


def three_slices(tmp_path: Path, series_uid: str = "1.2.20") -> list[Path]:
    return [ct_slice(tmp_path / "in" / f"IM{i}", series_uid=series_uid, z=5.0 * i, instance=i + 1,
                     stored=np.arange(64).reshape(8, 8) + 10 * i) for i in range(3)]


def test_an_instance_exported_twice_is_kept_once_and_its_copies_quarantined(tmp_path):
    """PACS exports repeat instances: a byte copy, and the same instance re-encoded (RLE) with another header."""
    first, middle, _ = three_slices(tmp_path)
    (tmp_path / "in" / "again").mkdir()
    shutil.copy(middle, tmp_path / "in" / "again" / "IM1")
    ds = pydicom.dcmread(first)
    ds.InstitutionName = "re-exported"
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(tmp_path / "in" / "again" / "IM0.rle")
    manifest, rows, quarantine = run(tmp_path)
    assert (manifest["records_in"], manifest["records_out"], manifest["records_quarantined"]) == (5, 3, 2)
    assert (manifest["series_out"], manifest["series_quarantined"]) == (1, 0)
    assert [r["position_mm"] for r in rows] == [0.0, 5.0, 10.0]
    assert [r["hu"][1] for r in rows] == [1 - 1024, 11 - 1024, 21 - 1024]
    assert reasons(quarantine) == {
        "again/IM0.rle": "duplicate of IM0 (same SOPInstanceUID and identical pixel data): the image is kept once",
        "again/IM1": "duplicate of IM1 (same SOPInstanceUID and identical pixel data): the image is kept once"}
    assert {r["locator"] for r in quarantine} == {f"series {record_pseudonym('1.2.20', KEY, kind='series')}"}


def test_a_copy_under_a_new_uid_at_the_same_position_is_kept_once(tmp_path):
    three_slices(tmp_path)
    ct_slice(tmp_path / "in" / "IM9", series_uid="1.2.20", z=5.0, instance=9,
             stored=np.arange(64).reshape(8, 8) + 10)
    manifest, rows, quarantine = run(tmp_path)
    assert (manifest["records_out"], len(rows)) == (3, 3)
    assert reasons(quarantine) == {
        "IM9": "duplicate of IM1 (same slice position and identical pixel data): the image is kept once"}


@pytest.mark.parametrize("same_uid", [True, False], ids=["same_sop_instance_uid", "same_position"])
def test_conflicting_copies_still_refuse_the_series(tmp_path, same_uid):
    _, middle, _ = three_slices(tmp_path)
    uid = pydicom.dcmread(middle).SOPInstanceUID
    extra = {"SOPInstanceUID": uid} if same_uid else {}
    ct_slice(tmp_path / "in" / "IM9", series_uid="1.2.20", z=5.0, instance=9,
             stored=np.arange(64).reshape(8, 8) + 99, **extra)
    manifest, rows, quarantine = run(tmp_path)
    assert (manifest["records_in"], manifest["records_quarantined"], rows) == (4, 4, [])
    reason = ("copies of one instance differ: IM1 and IM9 share a SOPInstanceUID but not their pixel data"
              if same_uid else
              "duplicate slice positions: IM1 and IM9 share a slice position but not their pixel data")
    assert set(reasons(quarantine).values()) == {reason}
