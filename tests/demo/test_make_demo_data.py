"""make_demo_data: deterministic, well-formed fake exports whose labels are visible in the data."""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from Bio import SeqIO
from pydicom.pixels import apply_rescale
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

import make_demo_data as demo_entry
from mmhealth.demo import data as demo

N, SEED, SIZE, SLICES = 12, 3, 16, (8, 16)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "raw"
    return out, demo.generate_demo(out, n_subjects=N, seed=SEED, image_size=SIZE, slices=SLICES)


@pytest.fixture(scope="module")
def series(export) -> dict[str, list[pydicom.Dataset]]:
    """PatientID -> that subject's slices, sorted along the slice normal (z)."""
    out, _ = export
    by_patient = defaultdict(list)
    for path in (out / "dicom").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            by_patient[ds.PatientID].append(ds)
    return {pid: sorted(slices, key=lambda d: float(d.ImagePositionPatient[2])) for pid, slices in by_patient.items()}


@pytest.fixture(scope="module")
def ids(export) -> dict[str, list[str]]:
    return json.loads((export[0] / "identifiers.json").read_text())


def _fasta_records(out: Path) -> dict[str, list]:
    """File name -> records, read with Bio.SeqIO (gzip included)."""
    records = {}
    for path in sorted((out / "fasta").iterdir()):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:
            records[path.name] = list(SeqIO.parse(handle, "fasta"))
    return records


def _motif_window_fraction(sequence: str) -> float:
    """Fraction of 256 bp windows (step 128) holding the motif with at most one mismatch."""
    motif = np.frombuffer(demo.MOTIF.encode(), dtype=np.uint8)
    seq = np.frombuffer(sequence.upper().encode(), dtype=np.uint8)
    views = np.lib.stride_tricks.sliding_window_view(seq, len(motif))
    hit = (views != motif).sum(axis=1) <= 1
    starts = range(0, len(seq) - 255, 128)
    return float(np.mean([hit[s:s + 256 - len(motif) + 1].any() for s in starts]))


def test_same_seed_gives_identical_files_and_other_seed_differs(export, tmp_path):
    out, summary = export
    again = tmp_path / "again"
    assert demo.generate_demo(again, n_subjects=N, seed=SEED, image_size=SIZE, slices=SLICES) == summary
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        if rel.parts[0] == "dicom":
            assert pydicom.dcmread(out / rel) == pydicom.dcmread(again / rel), rel
        else:
            assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    demo.generate_demo(other, n_subjects=N, seed=SEED + 1, image_size=SIZE, slices=SLICES)
    assert (other / "ehr/patients.csv").read_bytes() != (out / "ehr/patients.csv").read_bytes()


def test_layout_and_no_identifier_in_any_path(export, ids):
    out, summary = export
    patterns = {"dicom": r"dicom/EXPORT_\d{4}/SER\d+/IM\d{4}(\.dcm)?", "fasta": r"fasta/sample_\d{4}\.fa(\.gz)?",
                "ehr": r"ehr/(patients|diagnoses|labs|notes)\.csv", "labels": r"labels/[a-z_]+\.csv",
                "identifiers.json": r"identifiers\.json"}
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    for rel in files:
        assert re.fullmatch(patterns[rel.split("/")[0]], rel), rel
    assert {Path(f).stem for f in files if f.startswith("labels/")} == set(demo.TASKS)
    dicom_files = [f for f in files if f.startswith("dicom/")]
    assert len(dicom_files) == summary["dicom"]["files"]
    assert 0 < sum(f.endswith(".dcm") for f in dicom_files) < len(dicom_files) / 2  # some, not most
    assert 0 < summary["fasta"]["gzipped_files"] < summary["fasta"]["files"]
    secrets = [v for kind in ids.values() for v in kind]
    for rel in files:
        assert not [s for s in secrets if s in rel], rel


def test_dicom_geometry_tags_and_round_trip_of_stored_values(series):
    plans = {s.patient_id: s for s in demo.plan_subjects(N, SEED, SIZE, SLICES)}
    assert set(series) == set(plans)
    sop_uids = set()
    for pid, slices in series.items():
        plan, first = plans[pid], slices[0]
        assert re.fullmatch(r"MRN\d{7}", pid) and len(slices) == plan.n_slices
        assert SLICES[0] <= len(slices) <= SLICES[1]
        assert first.Modality == "CT" and first.SOPClassUID == CTImageStorage
        assert len({d.SeriesInstanceUID for d in slices}) == 1 and len({d.StudyInstanceUID for d in slices}) == 1
        assert sorted(int(d.InstanceNumber) for d in slices) == list(range(1, len(slices) + 1))
        z = np.array([float(d.ImagePositionPatient[2]) for d in slices])
        np.testing.assert_allclose(np.diff(z), float(first.SliceThickness), atol=1e-3)
        assert float(first.SpacingBetweenSlices) == float(first.SliceThickness)
        volume = demo.ct_volume(plan, SIZE, SEED)
        for k, ds in enumerate(slices):
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert ds.ImagePositionPatient[:2] == first.ImagePositionPatient[:2]
            assert ds.PixelSpacing == first.PixelSpacing and 0.5 < float(ds.PixelSpacing[0]) < 1
            assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (SIZE, SIZE, 16, 16, 15)
            assert ds.PixelRepresentation == 1 and ds.RescaleSlope == 1 and ds.RescaleIntercept == -1024
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            stored = ds.pixel_array
            assert stored.dtype == np.int16
            np.testing.assert_array_equal(stored, np.rint(volume[k]) + 1024)  # stored = HU + 1024
            np.testing.assert_array_equal(apply_rescale(stored, ds), np.rint(volume[k]))
            sop_uids.add(ds.SOPInstanceUID)
    assert len(sop_uids) == sum(len(s) for s in series.values())


def test_rle_series_decode_and_the_rest_are_explicit_little_endian(export, series):
    _, summary = export
    syntaxes = {pid: {d.file_meta.TransferSyntaxUID for d in slices} for pid, slices in series.items()}
    assert all(len(s) == 1 for s in syntaxes.values())
    rle = [pid for pid, s in syntaxes.items() if s == {RLELossless}]
    assert len(rle) == summary["dicom"]["rle_series"] >= 1
    assert all(s in ({RLELossless}, {ExplicitVRLittleEndian}) for s in syntaxes.values())
    for pid in rle:
        hu = np.stack([apply_rescale(d.pixel_array, d) for d in series[pid]])
        assert hu.shape[1:] == (SIZE, SIZE) and hu.min() < -900 and np.median(hu) > -1000


def test_lesion_blob_has_its_planned_hu_above_soft_tissue(series):
    plans = demo.plan_subjects(N, SEED, SIZE, SLICES)
    for plan in plans:
        hu = np.stack([apply_rescale(d.pixel_array, d) for d in series[plan.patient_id]]).astype(float)
        soft = hu[(hu > -200) & (hu < 120)]
        assert abs(np.median(soft) - demo.TISSUE_HU) < 8  # soft tissue sits at ~40 HU
        assert np.mean(hu < -950) > 0.2  # air around the body
        if plan.lesion is None:
            continue
        les = plan.lesion
        k = (les.first_slice + les.last_slice) // 2
        rows, cols = np.mgrid[0:SIZE, 0:SIZE]
        core = (rows - les.row) ** 2 + (cols - les.col) ** 2 <= 1.0  # inside the blob on its middle slice
        blob = hu[k][core]
        assert blob.size >= 1
        tolerance = 3 * demo.NOISE_HU / np.sqrt(blob.size) + 1
        assert abs(blob.mean() - (demo.TISSUE_HU + les.contrast_hu)) < tolerance, (plan.patient_id, blob)
        assert blob.mean() - np.median(soft) > 15  # brighter than the tissue around it
        assert les.last_slice - les.first_slice + 1 >= 0.65 * len(hu)  # visible on most slices


def test_fasta_records_parse_and_carry_the_motif_signal(export):
    out, summary = export
    plans = {s.patient_id: s for s in demo.plan_subjects(N, SEED, SIZE, SLICES)}
    records = _fasta_records(out)
    assert sum(len(r) for r in records.values()) == summary["fasta"]["records"]
    by_subject = defaultdict(list)
    for name, recs in records.items():
        subjects_in_file = {rec.id.split("|")[0] for rec in recs}
        assert recs, name
        for rec in recs:
            assert re.fullmatch(r"MRN\d{7}\|rec[123]", rec.id) and rec.description.startswith(rec.id + " ")
            assert 1000 <= len(rec.seq) <= 3000 and set(str(rec.seq).upper()) <= set("ACGTN")
            by_subject[rec.id.split("|")[0]].append(rec)
        # a subject's records never straddle files
        assert all({r.id for r in by_subject[s]} <= {r.id for r in recs} for s in subjects_in_file)
    assert max(len({r.id.split("|")[0] for r in recs}) for recs in records.values()) > 1
    assert set(by_subject) == set(plans)
    for pid, recs in by_subject.items():
        assert 1 <= len(recs) <= 3
        first = next(r for r in recs if r.id.endswith("|rec1"))
        fraction = _motif_window_fraction(str(first.seq))
        assert fraction > 0.5 if plans[pid].factors["motif"] else fraction < 0.5, (pid, fraction)


def test_ehr_tables_have_the_promised_columns_and_formats(export):
    out, summary = export
    tables = {name: pd.read_csv(out / "ehr" / f"{name}.csv", dtype=str) for name in summary["ehr"]}
    assert list(tables["patients"].columns) == ["patient_id", "name", "birth_date", "sex", "address"]
    assert list(tables["diagnoses"].columns) == ["patient_id", "icd10", "charttime"]
    assert list(tables["labs"].columns) == ["patient_id", "test", "value", "unit", "charttime"]
    assert list(tables["notes"].columns) == ["patient_id", "charttime", "text"]
    assert {k: len(v) for k, v in tables.items()} == summary["ehr"]
    patients = tables["patients"]
    assert patients.patient_id.is_unique and len(patients) == N and set(patients.sex) <= {"M", "F"}
    assert patients.birth_date.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    for name in ("diagnoses", "labs", "notes"):
        assert tables[name].charttime.str.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}").all(), name
        assert set(tables[name].patient_id) <= set(patients.patient_id)
    assert set(tables["labs"].test) == set(demo.LAB_UNITS)
    assert pd.to_numeric(tables["labs"].value).notna().all()
    words = tables["notes"].text.str.split().str.len()
    assert words.between(15, 70).all() and tables["notes"].groupby("patient_id").size().between(1, 4).all()


def test_each_signal_separates_its_label(tmp_path):
    """Bigger, cheaper cohort (tiny images) so class differences are measurable."""
    n = 80
    out = tmp_path / "signal"
    demo.generate_demo(out, n_subjects=n, seed=1, image_size=8, slices=(1, 2))
    plans = {s.patient_id: s for s in demo.plan_subjects(n, 1, 8, (1, 2))}
    diabetic = {pid for pid, s in plans.items() if s.factors["diabetes"]}
    labs = pd.read_csv(out / "ehr/labs.csv")
    glucose = labs[labs.test == "GLUCOSE"].groupby("patient_id").value.mean()
    hba1c = labs[labs.test == "HBA1C"].groupby("patient_id").value.mean()
    is_diabetic = glucose.index.isin(diabetic)
    assert glucose[is_diabetic].mean() - glucose[~is_diabetic].mean() > 30
    assert hba1c[is_diabetic].mean() - hba1c[~is_diabetic].mean() > 1.2
    dx = pd.read_csv(out / "ehr/diagnoses.csv")
    e11 = set(dx.patient_id[dx.icd10 == "E11.9"])
    assert len(e11 & diabetic) / len(diabetic) > 0.6 and len(e11 - diabetic) / (n - len(diabetic)) < 0.2
    notes = pd.read_csv(out / "ehr/notes.csv")
    mentions = notes.text.str.contains(r"spiculated|mass in|mm mass", regex=True)
    per_subject = mentions.groupby(notes.patient_id).any()
    finding = per_subject.index.map(lambda pid: plans[pid].factors["finding"]).astype(bool)
    assert per_subject[finding].mean() > 0.7 and per_subject[~finding].mean() == 0
    assert notes.text.str.contains("no nodule|no pulmonary nodule|No suspicious nodule").any()
    labels = {t: pd.read_csv(out / "labels" / f"{t}.csv") for t in demo.TASKS}
    for task in ("lesion_ct", "variant_dna", "finding_note", "diabetes_ehr"):
        assert labels[task].label.sum() == n // 2
    assert 0.3 <= labels["composite_risk"].label.mean() <= 0.7


def test_label_files_follow_the_latent_factors(export):
    out, summary = export
    plans = demo.plan_subjects(N, SEED, SIZE, SLICES)
    labels = {t: pd.read_csv(out / "labels" / f"{t}.csv", dtype={"subject_id": str}) for t in demo.TASKS}
    for task, table in labels.items():
        assert list(table.columns) == ["subject_id", "label"]
        assert list(table.subject_id) == [s.patient_id for s in plans]
        assert set(table.label) <= {0, 1}
        assert summary["labels"][task]["positive"] == table.label.sum()
        # independent balanced factors: single tasks exactly half; composite provably within [1/4, 3/4]
        assert 0.25 <= table.label.mean() <= 0.75 if task == "composite_risk" else table.label.sum() == N // 2
    votes = labels["lesion_ct"].label + labels["variant_dna"].label + labels["diabetes_ehr"].label
    assert ((votes >= 2).astype(int) == labels["composite_risk"].label).all()


def test_identifiers_json_lists_everything_the_data_contains(export, series, ids):
    out, _ = export
    listed = {kind: set(values) for kind, values in ids.items()}
    for slices in series.values():
        for ds in slices:
            assert ds.PatientID in listed["patient_ids"] and str(ds.PatientName) in listed["names"]
            assert ds.PatientBirthDate in listed["birth_dates"] and ds.PatientAddress in listed["addresses"]
            assert ds.AccessionNumber in listed["accession_numbers"]
            for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
                assert uid in listed["uids"]
    patients = pd.read_csv(out / "ehr/patients.csv", dtype=str)
    for row in patients.itertuples():
        assert {row.patient_id} <= listed["patient_ids"] and row.name in listed["names"]
        assert set(row.name.split()) <= listed["name_parts"] and row.birth_date in listed["birth_dates"]
        assert row.address in listed["addresses"]
    fasta_ids = {rec.id.split("|")[0] for recs in _fasta_records(out).values() for rec in recs}
    assert fasta_ids == listed["patient_ids"]
    notes = pd.read_csv(out / "ehr/notes.csv").text
    named = notes.apply(lambda t: any(p in t for p in listed["name_parts"]))
    assert 0.1 < named.mean() < 0.6  # the scrubber has work to do
    assert notes.apply(lambda t: any(d in t for d in listed["birth_dates"])).any()


def test_name_parts_never_occur_in_template_text():
    """A leak grep for a name part must only hit where a name was really written."""
    templates = " ".join(demo.NAME_OPENINGS + demo.DOB_OPENINGS + demo.PLAIN_OPENINGS + demo.ROUTINE
                         + demo.NEGATIVE_FINDING + demo.FINDING + demo.LOBES + demo.CLOSINGS).lower()
    parts = [*demo.FAMILY, *demo.GIVEN["M"], *demo.GIVEN["F"]]
    assert len(set(parts)) == len(parts)
    assert not [p for p in parts if p.lower() in templates]


def test_cli_rerun_replaces_a_demo_export_but_refuses_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--subjects", "3", "--seed", "5", "--image-size", "8",
            "--min-slices", "1", "--max-slices", "2"]
    demo_entry.main(args)
    first = (out / "ehr/patients.csv").read_bytes()
    demo_entry.main(args)  # a second run over its own output is allowed and gives the same bytes
    assert (out / "ehr/patients.csv").read_bytes() == first
    assert len(pd.read_csv(out / "labels/lesion_ct.csv")) == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="not a demo export"):
        demo.generate_demo(foreign, n_subjects=3)
    assert (foreign / "thesis.docx").read_text() == "precious"
    with pytest.raises(ValueError, match="slices"):
        demo.generate_demo(tmp_path / "bad", n_subjects=3, slices=(4, 2))


def test_an_unlabeled_pool_adds_patients_without_changing_the_labelled_ones(export, tmp_path):
    """--unlabeled: more patients with exports and no label rows, drawn from their own streams, so the
    labelled patients' files are byte for byte those of an export without the pool."""
    out, summary = export
    pooled = tmp_path / "pooled"
    more = demo.generate_demo(pooled, n_subjects=N, seed=SEED, image_size=SIZE, slices=SLICES, unlabeled=4)
    assert more["unlabeled"]["subjects"] == 4 and more["labels"] == summary["labels"]
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix != ".json"):
        here = pooled / path.relative_to(out)
        if path.parent.name == "ehr":  # the pool's rows come after the labelled patients' rows
            assert here.read_bytes().startswith(path.read_bytes()) and here.stat().st_size > path.stat().st_size
        else:
            assert here.read_bytes() == path.read_bytes(), path.relative_to(out)
    patients = pd.read_csv(pooled / "ehr" / "patients.csv")["patient_id"]
    labelled = set(pd.read_csv(pooled / "labels" / "lesion_ct.csv")["subject_id"])
    pool = set(patients) - labelled
    assert len(pool) == 4 and patients.is_unique
    assert {p.name for p in (pooled / "dicom").iterdir() if p.name.startswith("POOL_")} and \
        {p.name for p in (pooled / "fasta").iterdir() if p.name.startswith("pool_")}
    assert pool <= set(json.loads((pooled / "identifiers.json").read_text())["patient_ids"])
