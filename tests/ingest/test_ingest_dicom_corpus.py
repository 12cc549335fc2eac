"""Every real file of pydicom's test data and of pydicom-data either ingests or is quarantined with a
precise reason, and our fast header and pixel readers agree with pydicom's own on all of them."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.pixels import pixel_array
from test_ingest_dicom import plain

from mmhealth.core.pseudonym import subject_pseudonym
from mmhealth.ingest.dicom import ingest_dicom, parse_file
from mmhealth.ingest.dicom_pixels import native_pixels
from mmhealth.ingest.dicom_series import HEADER_ALLOW_LIST, header_value

KEY = b"c" * 64
PRECISE_REASONS = [  # every reason the stage can give; a generic or empty one fails the test
    r"not a DICOM file: .+", r"unreadable DICOM header: \w+: .+", r"DICOMDIR \(media directory index\), not an image",
    r"missing PatientID", r"missing SeriesInstanceUID", r"missing PixelSpacing", r"malformed \w+( \(.+\))?",
    r"Modality \w+ is not an image", r"no image pixel module \(Rows/Columns missing; .+\)",
    r"not a greyscale image \(SamplesPerPixel=\d+, PhotometricInterpretation=[\w ]+\)",
    r"BurnedInAnnotation is YES: .+", r"multi-frame geometry not supported: .+",
    r"ImageOrientationPatient and ImagePositionPatient must both be present or both absent",
    r"degenerate ImageOrientationPatient .+", r"slices of the series disagree on PatientID",
    r"slices disagree on (Rows/Columns|PixelSpacing|ImageOrientationPatient).+", r"localizer mixed into .+",
    r"duplicate slice positions: \d+ of \d+ slices repeat the position of another",
    r"duplicate slice positions: \S+ and \S+ share a slice position but not their pixel data",
    r"copies of one instance differ: \S+ and \S+ share a SOPInstanceUID but not their pixel data",
    r"duplicate of \S+ \(same (SOPInstanceUID|slice position) and identical pixel data\): the image is kept once",
    r"(missing slice\(s\)|non-uniform slice spacing): gap of .+ mm between slices \d+ and \d+ .+",
    r"cannot order slices: .+", r"ImagePositionPatient present in some slices only",
    r"pixel data of \S+ could not be decoded: \w+: .+",
]


def corpus_files() -> dict[str, Path]:
    """Relative name -> file, for every real file pydicom and pydicom-data ship (downloads excluded)."""
    files = {}
    for name in get_testdata_files():
        path = Path(name)
        if path.is_file():
            parts = path.parts
            anchor = max(i for i, part in enumerate(parts) if part in ("test_files", "data_store"))
            files["/".join(parts[anchor:])] = path
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict, list[dict], Path]:
    root = tmp_path_factory.mktemp("corpus")
    files = corpus_files()
    for name, path in files.items():
        (root / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "in" / name)
    manifest = ingest_dicom(root / "in", KEY, root / "out", 2, 16, source_map=root / "names.tsv")
    assert json.loads((root / "out" / "manifest.json").read_text()) == manifest
    quarantine = pq.read_table(root / "out" / "quarantine.parquet").to_pylist()
    manifest, quarantine = plain(manifest, quarantine, root / "names.tsv", root / "in")
    return files, manifest, quarantine, root


def test_every_file_ingests_or_is_quarantined_with_a_precise_reason(corpus):
    files, manifest, quarantine, _ = corpus
    assert len(files) > 200 and any(name.startswith("data_store/") for name in files)  # pydicom-data too
    refused = {row["source"]: row["reason"] for row in quarantine}
    assert len(refused) == len(quarantine)  # each refused file once
    assert manifest["records_in"] == len(files) == manifest["records_out"] + manifest["records_quarantined"]
    assert manifest["records_quarantined"] == len(refused) and set(refused) <= set(files)
    assert set(manifest["inputs"]) == set(files)
    for source, reason in refused.items():
        assert any(re.fullmatch(pattern, reason) for pattern in PRECISE_REASONS), (source, reason)
    assert manifest["records_out"] >= 15 and manifest["series_out"] >= 10


def test_known_files_get_their_expected_outcome(corpus):
    files, _, quarantine, root = corpus
    refused = {row["source"]: row["reason"] for row in quarantine}
    accepted = {"test_files/CT_small.dcm", "test_files/eCT_Supplemental.dcm", "test_files/JPEG2000_UNC.dcm"}
    assert accepted.isdisjoint(refused)
    assert refused["test_files/rtdose.dcm"] == "Modality RTDOSE is not an image"
    assert refused["data_store/data/emri_small.dcm"] == "missing PatientID"
    assert refused["test_files/waveform_ecg.dcm"] == ("no image pixel module (Rows/Columns missing; "
                                                      "12-lead ECG Waveform Storage)")
    # the same image in several transfer syntaxes shares one series; a truncated copy refuses it whole
    assert refused["test_files/MR_small.dcm"].startswith("pixel data of test_files/MR_truncated.dcm could not be "
                                                         "decoded: ")
    table = pq.read_table(root / "out" / "part-0.parquet").to_pylist() + \
        pq.read_table(root / "out" / "part-1.parquet").to_pylist()
    ct = subject_pseudonym(pydicom.dcmread(files["test_files/CT_small.dcm"]).PatientID, KEY)
    hu = np.array(next(r["hu"] for r in table if r["subject_id"] == ct))
    assert hu.size == 16 * 16 and -1000 < hu.min() < -500 and 500 < hu.max() < 1200


def _header(path: Path) -> tuple[pydicom.Dataset, bytes, int] | None:
    data = path.read_bytes()
    try:
        ds, offset = parse_file(data, path)
    except Exception:
        return None
    return ds, data, offset


def test_fast_header_values_equal_pydicom_conversion(corpus):
    files = corpus[0]
    compared = 0
    for name, path in files.items():
        parsed = _header(path)
        if parsed is None:
            continue
        ds, slow = parsed[0], pydicom.dcmread(io.BytesIO(parsed[1]), stop_before_pixels=True)
        for keyword in sorted(HEADER_ALLOW_LIST - {"PerFrameFunctionalGroupsSequence",
                                                   "SharedFunctionalGroupsSequence", "DirectoryRecordSequence"}):
            try:
                expected = slow.get(keyword)
            except Exception:  # pydicom itself cannot convert it: we must not invent a value either
                continue
            got = header_value(ds, keyword)
            if expected is None or expected == "":
                assert got in (None, ""), (name, keyword)
                continue
            if isinstance(got, list | tuple):  # CS/UI parts compare without their insignificant padding
                assert [type(g)(e).strip() if isinstance(g, str) else type(g)(e)
                        for g, e in zip(got, expected, strict=True)] == list(got), (name, keyword)
            elif isinstance(got, float | int) and not isinstance(expected, list):
                assert type(got)(expected) == got, (name, keyword)
            else:
                assert got == expected or str(got) == str(expected), (name, keyword)
            compared += 1
    assert compared > 2000


def test_native_pixels_equal_pydicom_decoding(corpus):
    files, _, _, _ = corpus
    compared = 0
    for name, path in files.items():
        parsed = _header(path)
        if parsed is None:
            continue
        ds, data, offset = parsed
        rows, cols, frames = (header_value(ds, k) for k in ("Rows", "Columns", "NumberOfFrames"))
        if not rows or not cols or header_value(ds, "SamplesPerPixel") not in (None, 1) or \
                not str(frames or 1).isdigit():
            continue
        fast = native_pixels(ds, data, offset, int(frames or 1), rows, cols)
        if fast is None:
            continue
        expected = pixel_array(pydicom.dcmread(io.BytesIO(data)))
        np.testing.assert_array_equal(fast.reshape(expected.shape), expected, err_msg=name)
        assert fast.dtype == expected.dtype, name
        compared += 1
    assert compared > 40
