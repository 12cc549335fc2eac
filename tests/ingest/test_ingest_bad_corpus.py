"""A bad-input corpus over the three ingest stages, generated here: each case's exact quarantine reason
(or the exact error of a mapping that cannot be ingested), and record accounting over the whole corpus."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file
from test_ingest_dicom import ct_slice
from test_ingest_fasta import write_fasta

from mmhealth.core.pseudonym import record_pseudonym
from mmhealth.ingest import common
from mmhealth.ingest.dicom import ingest_dicom
from mmhealth.ingest.ehr import EhrInputError, ingest_ehr
from mmhealth.ingest.fasta import ingest_fasta

KEY = b"q" * 64
REGEX = r"^(?P<subject_id>[^|]+)\|"
Expected = dict[tuple[str, str], str]  # (source, locator) -> reason


def _series(root: Path, uid: str, slices: list[dict]) -> list[str]:
    names = []
    for i, kwargs in enumerate(slices):
        ct_slice(root / uid / f"IM{i}", series_uid=uid, **{"instance": i + 1, **kwargs})
        names.append(f"{uid}/IM{i}")
    return names


def series_case(uid: str, slices: list[dict], reason: str) -> Callable[[Path], Expected]:
    def make(root: Path) -> Expected:
        locator = "series " + record_pseudonym(uid, KEY, kind="series")
        return {(name, locator): reason for name in _series(root, uid, slices)}
    return make


def file_case(name: str, make_file: Callable[[Path], object], reason: str) -> Callable[[Path], Expected]:
    def make(root: Path) -> Expected:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make_file(root / name)
        return {(name, "file"): reason}
    return make


def _rgb(path: Path) -> None:
    ct_slice(path, series_uid="9.61", stored=np.zeros((8, 8, 3)), SamplesPerPixel=3,
             PhotometricInterpretation="RGB", PlanarConfiguration=0)


NOT_DICOM = ("not a DICOM file: File is missing DICOM File Meta Information header or the 'DICM' prefix is "
             "missing from the header. Use force=True to force reading.")
UNIFORM = [{"z": 0.0}, {"z": 2.0}, {"z": 4.0}, {"z": 6.0}]
DICOM_CASES: dict[str, Callable[[Path], Expected]] = {
    "not_dicom": file_case("notes.txt", lambda p: p.write_text("not dicom at all"), NOT_DICOM),
    "dicomdir": file_case("DICOMDIR", lambda p: shutil.copy(get_testdata_file("DICOMDIR"), p),
                          "DICOMDIR (media directory index), not an image"),
    "no_patient_id": file_case("nopid.dcm", lambda p: ct_slice(p, series_uid="9.50", patient_id=""),
                               "missing PatientID"),
    "no_series_uid": file_case("noseries.dcm", lambda p: ct_slice(p, series_uid="9.51", SeriesInstanceUID=None),
                               "missing SeriesInstanceUID"),
    "no_pixel_spacing": file_case("nospacing.dcm", lambda p: ct_slice(p, series_uid="9.52", PixelSpacing=None),
                                  "missing PixelSpacing"),
    "zero_pixel_spacing": file_case("zerospacing.dcm",
                                    lambda p: ct_slice(p, series_uid="9.53", spacing=(0.0, 0.5)),
                                    "malformed PixelSpacing (not positive)"),
    "segmentation": file_case("seg.dcm", lambda p: ct_slice(p, series_uid="9.54", Modality="SEG"),
                              "Modality SEG is not an image"),
    "rgb": file_case("rgb.dcm", _rgb, "not a greyscale image (SamplesPerPixel=3, PhotometricInterpretation=RGB)"),
    "multiframe_one_position": file_case(
        "cine.dcm", lambda p: ct_slice(p, series_uid="9.55", stored=np.zeros((3, 8, 8)), NumberOfFrames=3),
        "multi-frame geometry not supported: 3 frames share one ImagePositionPatient (no per-frame "
        "functional groups)"),
    "malformed_position": file_case(
        "badpos.dcm", lambda p: ct_slice(p, series_uid="9.56", ImagePositionPatient=["1", "2"]),
        "malformed ImagePositionPatient (expected 3 numbers)"),
    "half_geometry": file_case(
        "halfgeom.dcm", lambda p: ct_slice(p, series_uid="9.57", ImagePositionPatient=None),
        "ImageOrientationPatient and ImagePositionPatient must both be present or both absent"),
    "degenerate_orientation": file_case(
        "degenerate.dcm", lambda p: ct_slice(p, series_uid="9.58", orientation=(1, 0, 0, 1, 0, 0)),
        "degenerate ImageOrientationPatient (row and column directions are parallel)"),
    "burned_in_annotation": file_case(
        "burned.dcm", lambda p: ct_slice(p, series_uid="9.59", BurnedInAnnotation="YES"),
        "BurnedInAnnotation is YES: identifying text may be burned into the pixels"),
    "no_pixel_module": file_case("norows.dcm", lambda p: ct_slice(p, series_uid="9.60", Rows=None),
                                 "no image pixel module (Rows/Columns missing; CT Image Storage)"),
    "orientation_minority": series_case(
        "1.1", [*UNIFORM, {"z": 8.0, "orientation": (1, 0, 0, 0, 0, -1)}],
        "slices disagree on ImageOrientationPatient: 1 of 5 slices differ from the series majority "
        "(first: 1.1/IM4; a localizer in the series?)"),
    "localizer_image_type": series_case(
        "1.2", [*UNIFORM[:3], {"z": 6.0, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}],
        "localizer mixed into the series: 1 of 4 slices have ImageType LOCALIZER (first: 1.2/IM3)"),
    "sizes_disagree": series_case("1.3", [{"z": 0}, {"z": 5, "rows": 16, "cols": 16}],
                                  "slices disagree on Rows/Columns (8x8, 16x16)"),
    "spacing_disagrees": series_case("1.4", [{"z": 0}, {"z": 5, "spacing": (0.7, 0.7)}],
                                     "slices disagree on PixelSpacing ([0.5, 0.5] vs [0.7, 0.7] mm)"),
    "duplicate_positions": series_case("1.5", [{"z": 0}, {"z": 5}, {"z": 5, "stored": np.full((8, 8), 7)}],
                                       "duplicate slice positions: 1.5/IM1 and 1.5/IM2 share a slice position but "
                                       "not their pixel data"),
    "patients_disagree": series_case("1.6", [{"z": 0}, {"z": 5, "patient_id": "OTHER-PATIENT"}],
                                     "slices of the series disagree on PatientID"),
    "no_order": series_case(
        "1.7", [{"ImagePositionPatient": None, "ImageOrientationPatient": None},
                {"ImagePositionPatient": None, "ImageOrientationPatient": None, "InstanceNumber": 1}],
        "cannot order slices: no ImagePositionPatient and InstanceNumber missing or repeated"),
    "missing_slice": series_case(
        "1.8", [{"z": 0.0}, {"z": 2.0}, {"z": 4.0}, {"z": 8.0}, {"z": 10.0}],
        "missing slice(s): gap of 4 mm between slices 2 and 3 (at 4 and 8 mm) is 2 times the median "
        "spacing 2 mm; 1 of 4 gaps are off by more than 10%"),
    "uneven_spacing": series_case(
        "1.9", [{"z": 0.0}, {"z": 2.0}, {"z": 4.0}, {"z": 6.5}, {"z": 8.5}],
        "non-uniform slice spacing: gap of 2.5 mm between slices 2 and 3 (at 4 and 6.5 mm) deviates 25% "
        "from the median spacing 2 mm; 1 of 4 gaps are off by more than 10%"),
    "undecodable_pixels": series_case(
        "1.10", [{"z": 0}, {"z": 5, "PixelData": b"\x00\x01"}],
        "pixel data of 1.10/IM1 could not be decoded: ValueError: The number of bytes of pixel data is less "
        "than expected (2 vs 128 bytes) - the dataset may be corrupted, have an invalid group 0028 element "
        "value, or the transfer syntax may be incorrect"),
}


def _fasta_file(name: str, text: bytes, gz: bool = False) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / name).write_bytes(gzip.compress(text, mtime=0) if gz else text)
    return make


def _cut_gzip(root: Path) -> None:
    rng = np.random.default_rng(3)
    records = "".join(f">S{i}|r{i}\n" + "".join(rng.choice(list("ACGT"), 4000)) + "\n" for i in range(4))
    packed = gzip.compress(records.encode(), mtime=0)
    (root / "cut.fa.gz").write_bytes(packed[: len(packed) * 2 // 3])


FASTA_RECORDS = [("S1|ok", "ACGTACGTACGT"), ("no_pipe_here", "ACGTACGT"), ("", "ACGTACGT"), ("S1|empty", ""),
                 ("S1|bad", "ACGTXACG*T"), ("S1|ok", "ACGTACGT"), ("S1|short", "ACG"),
                 ("S1|allN", "NNNNNNNNACNNNNNN"), ("S1|gap", "ACGT-ACGT")]
FASTA_CASES: dict[str, tuple[Callable[[Path], None] | None, Expected]] = {
    "regex_mismatch": (None, {("a.fa", "record 2"): "header does not match the subject regex"}),
    "empty_header": (None, {("a.fa", "record 3"): "empty header"}),
    "empty_sequence": (None, {("a.fa", "record 4"): "empty sequence"}),
    "non_iupac": (None, {("a.fa", "record 5"): "non-IUPAC characters '*', 'X' (first at position 5)"}),
    "duplicate_id": (None, {("a.fa", "record 6"): "duplicate record id (first seen in a.fa record 1)"}),
    "too_short": (None, {("a.fa", "record 7"): "3 bases, shorter than half a window (8)"}),
    "all_windows_n": (None, {("a.fa", "record 8"): "no window kept: all 2 windows have an N fraction above 0.5"}),
    "alignment_gap": (None, {("a.fa", "record 9"): "non-IUPAC characters '-' (first at position 5)"}),
    "cut_gzip": (_cut_gzip, {("cut.fa.gz", "file"): "unreadable file, broke after record 2: EOFError: "
                             "Compressed file ended before the end-of-stream marker was reached"}),
    "not_gzip": (_fasta_file("garbage.fa.gz", b"this is not gzip at all"),
                 {("garbage.fa.gz", "file"): "unreadable file, broke before the first record: BadGzipFile: "
                                             "Not a gzipped file (b'th')"}),
    "text_before_header": (_fasta_file("lead.fa", b"junk\n>S9|r9\nACGT\n"),
                           {("lead.fa", "file"): "unreadable file, broke before the first record: ValueError: "
                                                 "text before the first '>' header"}),
    "empty_file": (_fasta_file("empty.fa", b""), {("empty.fa", "file"): "no FASTA records in file"}),
    "header_not_utf8": (_fasta_file("latin1.fa", b">S7|r1\nACGTACGT\n>S7|Jos\xe9\nACGTACGT\n"),
                        {("latin1.fa", "file"): "unreadable file, broke after record 1: UnicodeDecodeError: "
                                                "'utf-8' codec can't decode byte 0xe9 in position 6: "
                                                "unexpected end of data"}),
}

LABS = {"path": "labs.csv", "subject_id": "patient_id", "time": "charttime",
        "events": [{"code": "LAB//{test}", "numeric_value": "value"}]}
VITALS = {"path": "vitals.csv", "subject_id": "pid", "time": "when", "time_format": "%d/%m/%Y %H:%M",
          "events": [{"code": "VITAL//HR", "numeric_value": "hr"}]}
LABS_CSV = (b"patient_id,charttime,test,value\n"
            b"1,2020-01-01 10:00,GLUCOSE,5\n"       # 2: fine
            b",2020-01-01 10:00,GLUCOSE,5\n"        # 3
            b"1,2020-13-45 10:00,GLUCOSE,5\n"       # 4
            b"1,,GLUCOSE,5\n"                       # 5
            b"1,2020-01-01 10:00,GLUCOSE,high\n"    # 6
            b"1,2020-01-01 10:00,GLUCOSE,1e60\n"    # 7
            b"1,2020-01-01 10:00, ,5\n"             # 8
            b"1,2020-01-01 10:00,GLUC\xd6SE,5\n")   # 9: Latin-1, not UTF-8
EHR_CASES: dict[str, Expected] = {
    "missing_subject": {("labs.csv", "line 3"): "missing subject id in column 'patient_id'"},
    "bad_time": {("labs.csv", "line 4"): "unparseable time in column 'charttime' (expected ISO 8601)"},
    "empty_time": {("labs.csv", "line 5"): "empty time in column 'charttime'"},
    "bad_number": {("labs.csv", "line 6"): "unparseable numeric_value in column 'value'"},
    "number_beyond_float32": {("labs.csv", "line 7"): "unparseable numeric_value in column 'value'"},
    "empty_code_value": {("labs.csv", "line 8"): "empty value in column 'test' for code 'LAB//{test}'"},
    "not_utf8": {("labs.csv", "line 9"): "not valid UTF-8 in column 'test' (byte 0xD6); if the whole file is in another "
                                                   "encoding, set the table's encoding"},
    "time_format_mismatch": {("vitals.csv", "line 3"):
                             "unparseable time in column 'when' (expected '%d/%m/%Y %H:%M')"},
}


def _ingested(out: Path) -> tuple[dict, dict[tuple[str, str], str]]:
    """Manifest and quarantine, inputs named by their paths again through the job's source map (staging)."""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
    names = common.read_source_maps([out.parent / "names.tsv"])
    assert all(name in names for name in manifest["inputs"])
    rows = pq.read_table(out / "quarantine.parquet").to_pylist()
    got = {(names[r["source"]], r["locator"]): common.unname(r["reason"], names) for r in rows}
    assert len(got) == len(rows)  # one row per refused input
    return manifest, got


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    root = tmp_path_factory.mktemp("dicom")
    expected = {case: make(root / "in") for case, make in DICOM_CASES.items()}
    _series(root / "in", "2.1", UNIFORM)  # a good series next to the bad ones
    ingest_dicom(root / "in", KEY, root / "out", 2, 8, source_map=root / "names.tsv")
    manifest, got = _ingested(root / "out")
    return expected, manifest, got


@pytest.mark.parametrize("case", DICOM_CASES)
def test_dicom_case_is_quarantined_with_its_exact_reason(dicom_run, case):
    expected, _, got = dicom_run
    for key, reason in expected[case].items():
        assert got[key] == reason, key


def test_dicom_corpus_accounting(dicom_run):
    expected, manifest, got = dicom_run
    refused = {key for case in expected.values() for key in case}
    assert set(got) == refused
    assert (manifest["records_in"], manifest["records_out"]) == (len(refused) + len(UNIFORM), len(UNIFORM))
    assert manifest["records_quarantined"] == len(refused) and manifest["rows_written"] == len(UNIFORM)


@pytest.fixture(scope="module")
def fasta_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("fasta")
    write_fasta(root / "in" / "a.fa", FASTA_RECORDS)
    write_fasta(root / "in" / "b.fa", [("S2|fine", "ACGTACGT")])
    for make, _ in FASTA_CASES.values():
        if make:
            make(root / "in")
    ingest_fasta(root / "in", KEY, root / "out", 2, REGEX, 8, 8, 0.5, source_map=root / "names.tsv")
    return _ingested(root / "out")


@pytest.mark.parametrize("case", FASTA_CASES)
def test_fasta_case_is_quarantined_with_its_exact_reason(fasta_run, case):
    _, got = fasta_run
    for key, reason in FASTA_CASES[case][1].items():
        assert got[key] == reason, key


def test_fasta_corpus_accounting(fasta_run):
    manifest, got = fasta_run
    assert set(got) == {key for _, expected in FASTA_CASES.values() for key in expected}
    # a.fa 9 records (1 out), b.fa 1 out, cut.fa.gz 2 read before the break, latin1.fa 1 read, others 0
    assert (manifest["records_in"], manifest["records_out"], manifest["records_quarantined"]) == (13, 2, 11)


@pytest.fixture(scope="module")
def ehr_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("ehr")
    (root / "labs.csv").write_bytes(LABS_CSV)
    (root / "vitals.csv").write_text("pid,when,hr\n2,01/02/2020 10:00,60\n2,2020-02-01 10:00,61\n")
    tables = [{**spec, "path": str(root / spec["path"])} for spec in (LABS, VITALS)]
    ingest_ehr(tables, KEY, root / "out", 2, source_map=root / "names.tsv")
    manifest, got = _ingested(root / "out")
    return manifest, {(Path(source).name, locator): reason for (source, locator), reason in got.items()}


@pytest.mark.parametrize("case", EHR_CASES)
def test_ehr_case_is_quarantined_with_its_exact_reason(ehr_run, case):
    _, got = ehr_run
    for key, reason in EHR_CASES[case].items():
        assert got[key] == reason, key


def test_ehr_corpus_accounting(ehr_run):
    manifest, got = ehr_run
    assert set(got) == {key for expected in EHR_CASES.values() for key in expected}
    assert (manifest["records_in"], manifest["records_out"], manifest["records_quarantined"]) == (10, 2, 8)


@pytest.mark.parametrize(("table", "header", "message"), [
    (LABS, "patient_id,charttime,test\n", r"labs\.csv: column 'value' \(numeric_value of 'LAB//\{test\}'\) is missing"),
    ({**LABS, "colour": "red"}, "", r"inputs\.ehr\[0\]: unknown key\(s\) \['colour'\]"),
    ({**LABS, "events": [{"code": "LAB//{test:>5}"}]}, "",
     r"code template 'LAB//\{test:>5\}': placeholders must be plain column names like \{test\}"),
    ({**LABS, "path": "nowhere.csv"}, None, r"nowhere\.csv: cannot read CSV: FileNotFoundError"),
], ids=["missing_column", "unknown_key", "bad_template", "missing_file"])
def test_ehr_mapping_errors_fail_with_exact_message(tmp_path, table, header, message):
    if header is not None:
        (tmp_path / "labs.csv").write_text(header)
    with pytest.raises(EhrInputError, match=message):
        ingest_ehr([{**table, "path": str(tmp_path / table["path"])}], KEY, tmp_path / "out", 1)
