"""De-identification: date shifts never zero or small, Safe Harbor ages, typed note scrubbing with measured
recall, and a walk over every DICOM element proving nothing outside the allow-list reaches the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_ingest_dicom import ct_slice

from mmhealth.core.pseudonym import date_shift_days, load_or_create_salt, subject_pseudonym
from mmhealth.demo.data import generate_demo, plan_subjects, write_demo_salt
from mmhealth.demo.phi_notes import labelled_notes, score
from mmhealth.ingest import common
from mmhealth.ingest.dicom import ingest_dicom
from mmhealth.ingest.dicom_series import HEADER_ALLOW_LIST
from mmhealth.ingest.ehr import ingest_ehr
from mmhealth.ingest.ehr_phi import scrub_phi
from mmhealth.ingest.ehr_scrub import identifier_terms, scrubbed

KEY = b"d" * 64
MIN_SHIFT = common.privacy_params().min_date_shift_days


def test_no_demo_subject_keeps_a_real_date(tmp_path):
    """Every one of the demo's 200 subjects, through the pseudonym function and through the real EHR stage."""
    write_demo_salt(tmp_path / "salt", 0)
    key = load_or_create_salt(tmp_path / "salt")
    subjects = plan_subjects(200, 0, 16, (1, 1))
    shifts = {s.patient_id: date_shift_days(subject_pseudonym(s.patient_id, key), key, MIN_SHIFT) for s in subjects}
    assert min(abs(d) for d in shifts.values()) >= MIN_SHIFT == 30
    assert 0 < sum(d > 0 for d in shifts.values()) < len(shifts)  # both signs: the direction tells nothing
    generate_demo(tmp_path / "raw", 20, 0, 16, (1, 1))
    tables = [{"path": str(tmp_path / "raw" / "ehr" / "patients.csv"), "subject_id": "patient_id",
               "identifiers": ["name", "address"], "events": [{"code": "MEDS_BIRTH", "time": "birth_date"}]}]
    ingest_ehr(tables, key, tmp_path / "out", 1)
    births = pq.read_table(tmp_path / "out" / "part-0.parquet").to_pandas().set_index("subject_id")["time"]
    for s in plan_subjects(20, 0, 16, (1, 1)):
        pseudonym = subject_pseudonym(s.patient_id, key)
        moved = births[pseudonym] - pd.Timestamp(s.birth_date)
        assert moved == pd.Timedelta(days=date_shift_days(pseudonym, key, MIN_SHIFT)) and abs(moved.days) >= 30


def test_min_shift_is_configurable_and_checked():
    shifts = [date_shift_days(s, KEY, 200) for s in range(300)]
    assert min(map(abs, shifts)) >= 200 and max(map(abs, shifts)) <= 365
    with pytest.raises(ValueError, match=r"min_days must be within 1\.\.365"):
        date_shift_days(1, KEY, 0)
    with pytest.raises(ValueError, match=r"privacy\.min_date_shift_days"):
        common.privacy_params('{"min_date_shift_days": 0}')


def test_subjects_over_89_are_reported_as_90(tmp_path):
    (tmp_path / "patients.csv").write_text("pid,birth\nold,1921-05-01\nyoung,1960-01-01\nexactly90,1930-01-01\n")
    (tmp_path / "visits.csv").write_text("pid,when\nold,2015-01-01\nold,2020-06-01\nyoung,2020-06-01\n"
                                         "exactly90,2019-12-31\n")
    tables = [{"path": str(tmp_path / "patients.csv"), "subject_id": "pid",
               "events": [{"code": "MEDS_BIRTH", "time": "birth"}]},
              {"path": str(tmp_path / "visits.csv"), "subject_id": "pid", "time": "when",
               "events": [{"code": "VISIT"}]}]
    manifest = ingest_ehr(tables, KEY, tmp_path / "out", 1)
    events = pq.read_table(tmp_path / "out" / "part-0.parquet").to_pandas()
    assert manifest["subjects_age_capped_at_90"] == 1
    for raw, age_at_last in (("old", 90), ("young", 60), ("exactly90", 89)):
        mine = events[events.subject_id == subject_pseudonym(raw, KEY)]
        birth, last = mine.loc[mine.code == "MEDS_BIRTH", "time"].iloc[0], mine["time"].max()
        assert (last - pd.DateOffset(years=age_at_last)) >= birth > (last - pd.DateOffset(years=age_at_last + 1))
    old = events[events.subject_id == subject_pseudonym("old", KEY)]
    birth, last = old.loc[old.code == "MEDS_BIRTH", "time"].iloc[0], old["time"].max()
    assert birth == last - pd.DateOffset(years=90)  # moved to exactly 90 at the last event


@pytest.mark.parametrize(("text", "expected"), [
    ("Her daughter Rosalind (cell 617-555-0143) was here; Rosalind will call.",
     "Her daughter [NAME] (cell [PHONE]) was here; [NAME] will call."),
    ("Fax (212) 555 0199 or +44 20 7946 0958, e-mail a.b@x.org, see https://x.org/p?id=3.",
     "Fax [PHONE] or [PHONE], e-mail [EMAIL], see [URL]."),
    ("Alternate MRN: ZX00012Q7, SSN 123-45-6789, acct #778812.", "Alternate MRN: [ID], SSN [ID], acct #[ID]."),
    ("Lives at 42 Wisteria Lane, Apt 2, Salem, MA 01970.", "Lives at [ADDRESS], Salem, [ADDRESS]."),
    ("Seen 03/14/2021 and March 3, 2021. A 93-year-old.", "Seen [DATE] and [DATE]. A 90+-year-old."),
    ("Signed: Okonkwo, Adaeze MD. Discussed with Dr. O'Brien and J. McAllister, RN.",
     "Signed: [NAME], [NAME] MD. Discussed with Dr. [NAME] and [NAME], RN."),
    # clinical text stays: eponyms, doses, scores, codes, sizes
    ("Parkinson's disease; Foley catheter; Gleason 3+4, T2N0M0; 500 mg; BP 132/84; 14 mm nodule; ICD-10 E11.9.",
     "Parkinson's disease; Foley catheter; Gleason 3+4, T2N0M0; 500 mg; BP 132/84; 14 mm nodule; ICD-10 E11.9."),
])
def test_phi_patterns_become_typed_placeholders(text, expected):
    assert scrub_phi(text) == expected


def test_labelled_notes_recall_and_precision():
    """The benchmark's labelled set (fewer notes): recall >= 0.98 for every category, little text lost."""
    notes = labelled_notes(300, seed=1)
    redact = {n.patient_id: set().union(*(identifier_terms(v) for v in n.identifiers)) for n in notes}
    patterns: dict = {}
    result = score(notes, [scrubbed(n.text, n.patient_id, redact, patterns) for n in notes])
    for category in ("NAME", "PHONE", "EMAIL", "ID", "ADDRESS", "URL", "DATE", "AGE"):
        assert result[category]["recall"] >= 0.98, (category, result[category])
    assert result["all_phi"]["token_precision"] >= 0.95 and result["clinical_tokens_lost"] <= 0.01


# ---- DICOM: every element of real and planted files; only allow-listed values may reach the outputs ----
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _walk(ds: Dataset, allowed: bool = False):
    """(keyword or tag, value, under an allow-listed element) of every text element, sequences included."""
    for element in ds:
        name = element.keyword or str(element.tag)
        inside = allowed or element.keyword in HEADER_ALLOW_LIST
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item, inside)
        elif element.VR in TEXT_VRS and element.value not in (None, ""):
            values = element.value if isinstance(element.value, pydicom.multival.MultiValue) else [element.value]
            for value in values:
                yield name, str(value), inside


def _planted(path: Path, index: int) -> None:
    ct_slice(path, series_uid=f"1.2.826.0.1.3680043.10.777.{index}", z=2.0 * index, instance=index + 1,
             patient_id=f"PLANTED{index:04d}Q", OtherPatientIDs=f"OTHERID{index:04d}Q",
             AccessionNumber=f"ACCX{index:05d}", ImageComments=f"Patient Quillon{index} phoned 617-555-0{index:03d}",
             InstitutionName="Wisteria Memorial Clinic", ReferringPhysicianName=f"Okonkwo{index}^Adaeze",
             PatientTelephoneNumbers=[f"617-555-1{index:03d}"], StudyDescription=f"CT for Quillon{index}",
             RequestAttributesSequence=Sequence([Dataset()]))
    ds = pydicom.dcmread(path)
    ds.RequestAttributesSequence[0].RequestingPhysician = f"Referrer{index}^Hortensia"
    ds.RequestAttributesSequence[0].RequestedProcedureID = f"RPQ{index:05d}"
    ds.private_block(0x0011, "MMHEALTH PHI TEST", create=True).add_new(0x01, "LO", f"PRIVATE Quillon{index}")
    ds.save_as(path, enforce_file_format=True)


def test_no_dicom_element_outside_the_allow_list_reaches_the_outputs(tmp_path):
    files = [Path(p) for p in get_testdata_files("*.dcm")]
    (tmp_path / "in").mkdir()
    for number, path in enumerate(files):
        (tmp_path / "in" / f"real_{number:03d}.dcm").write_bytes(path.read_bytes())
    for index in range(4):
        _planted(tmp_path / "in" / "planted" / f"IM{index}", index)
    secrets, allowed = set(), set()
    for path in (tmp_path / "in").rglob("*"):
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # unreadable files are quarantined whole; nothing of them is read
            continue
        for _, value, inside in _walk(ds):
            (allowed if inside else secrets).add(value)
    # a value that is also an allowed element's value ('CT', '1') or too short to identify anyone is no needle
    # nor is an attribute's keyword ('ImagePositionPatient' in a dimension description, quoted in reasons)
    needles = {v for v in secrets - allowed if len(v) >= 6 and not v.replace(".", "").replace("-", "").isdigit()
               and tag_for_keyword(v) is None}
    needles |= {v for v in secrets - allowed if v.count(".") >= 3}  # UIDs: never raw in the outputs
    assert len(needles) > 200 and "Wisteria Memorial Clinic" in needles and "RPQ00003" in needles
    ingest_dicom(tmp_path / "in", KEY, tmp_path / "out", 2, 8, source_map=tmp_path / "names.tsv")
    out = []
    for path in (tmp_path / "out").iterdir():
        out.append(path.read_bytes().decode("latin-1"))  # Parquet footers keep column statistics in plain bytes
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            out.append(json.dumps(table.to_pylist(), default=str) + str(table.schema.metadata))
    leaks = sorted(n for n in needles if any(n in text for text in out))
    assert not leaks, leaks[:10]
    assert not any(p.name in text for p in (tmp_path / "in").rglob("*") for text in out)  # file names too
