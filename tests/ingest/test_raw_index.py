"""The parse-time raw index: which raw files feed which ingest shard, and untouched staged slices."""

import os
from pathlib import Path

import pytest

from mmhealth.core.pseudonym import load_or_create_salt, shard_of, subject_pseudonym
from mmhealth.demo.data import generate_demo
from mmhealth.ingest import raw_index
from mmhealth.ingest.common import unassigned_shard

SHARDS = 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    generate_demo(root / "raw", n_subjects=12, seed=3, image_size=16, slices=(4, 5))
    return root


def inputs_of(root):
    raw = root / "raw"
    return {
        "dicom": str(raw / "dicom"), "fasta": str(raw / "fasta"), "fasta_subject_regex": r"^(?P<subject_id>[^|]+)",
        "ehr": [{"path": str(raw / "ehr" / "labs.csv"), "subject_id": "patient_id", "events": [{"code": "LAB"}]}],
    }


def test_every_file_goes_to_its_subjects_shard(demo, tmp_path):
    import pydicom

    salt = tmp_path / "salt"
    index = raw_index.build_index(inputs_of(demo), str(salt), SHARDS, str(tmp_path / "staging"))
    key = load_or_create_salt(salt)
    listed = [p for paths in index.dicom.values() for p in paths]
    assert sorted(listed) == sorted(str(p) for p in (demo / "raw" / "dicom").rglob("*") if p.is_file())
    for shard, paths in index.dicom.items():
        for path in paths:
            patient = pydicom.dcmread(path, stop_before_pixels=True).PatientID
            assert shard_of(subject_pseudonym(patient, key), SHARDS) == shard
    fasta_files = {p for paths in index.fasta.values() for p in paths}
    assert fasta_files == {str(p) for p in (demo / "raw" / "fasta").iterdir()}


def test_unreadable_and_orphan_files_go_to_their_unassigned_shard(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "notes.txt").write_text("not DICOM")
    (tmp_path / "fasta").mkdir()
    (tmp_path / "fasta" / "x.fa").write_text(">|no subject\nACGT\n")
    index = raw_index.build_index({"dicom": str(tmp_path / "dicom"), "fasta": str(tmp_path / "fasta"),
                                   "fasta_subject_regex": r"^(?P<subject_id>[^|]+)"},
                                  str(tmp_path / "salt"), SHARDS, str(tmp_path / "staging"))
    assert index.dicom == {unassigned_shard("notes.txt", SHARDS): [str(tmp_path / "dicom" / "notes.txt")]}
    assert index.fasta == {unassigned_shard("x.fa", SHARDS): [str(tmp_path / "fasta" / "x.fa")]}


def test_staged_slices_keep_lines_and_stay_untouched_when_rows_do_not_change(demo, tmp_path):
    staging, salt = tmp_path / "staging", str(tmp_path / "salt")
    index = raw_index.build_index(inputs_of(demo), salt, SHARDS, str(staging))
    staged = [p for k in range(SHARDS) for p in index.ehr[k]]
    rows = sum(len(Path(p).read_text().splitlines()) - 1 for p in staged)
    assert rows == len((demo / "raw" / "ehr" / "labs.csv").read_text().splitlines()) - 1
    assert Path(staged[0]).read_text().splitlines()[0].startswith(raw_index.LINE_COLUMN + ",")
    before = {p: os.stat(p).st_mtime_ns for p in staged}
    os.utime(demo / "raw" / "ehr" / "labs.csv")  # newer, same rows: the cache misses, the slices stay
    raw_index.build_index(inputs_of(demo), salt, SHARDS, str(staging))
    assert {p: os.stat(p).st_mtime_ns for p in staged} == before


def test_missing_inputs_are_listed_for_snakemake_to_report(tmp_path):
    index = raw_index.build_index({"dicom": str(tmp_path / "nowhere"), "ehr": []}, str(tmp_path / "salt"),
                                  SHARDS, str(tmp_path / "staging"))
    assert index.dicom == {k: [str(tmp_path / "nowhere")] for k in range(SHARDS)}
    assert not (tmp_path / "salt").exists()  # nothing indexed, no key made
