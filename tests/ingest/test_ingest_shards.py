"""Per-shard ingest jobs: N jobs plus `merge` give exactly what one whole-folder run gives, every record is
counted by exactly one job (subjects by their shard, subject-less records by `unassigned_shard`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_ingest_dicom import ct_slice

import ingest_dicom as dicom_entry
import ingest_ehr as ehr_entry
import ingest_fasta as fasta_entry
import ingest_manifest
from mmhealth.core.pseudonym import shard_of, subject_pseudonym
from mmhealth.demo.data import generate_demo
from mmhealth.ingest import common, raw_index
from mmhealth.ingest import dicom as ingest_dicom
from mmhealth.ingest import ehr as ingest_ehr
from mmhealth.ingest import fasta as ingest_fasta

SHARDS = 3
REGEX = r"^(?P<subject_id>[^|]+)\|"
SALT = "0123456789abcdef" * 4


def other_patient() -> str:
    """A raw patient id whose shard differs from PAT-A's."""
    key = SALT.encode()
    return next(f"PAT-{i}" for i in range(99) if shard_of(subject_pseudonym(f"PAT-{i}", key), SHARDS)
                != shard_of(subject_pseudonym("PAT-A", key), SHARDS))


def stage_tables(tables: list[dict], key: bytes, shards: int, folder: Path) -> list[list[dict]]:
    """What the workflow's staging step does (the raw-file index's own function): each table's rows split by
    shard (no usable subject -> shard 0), cells as read, the original 1-based line (header = 1) in `__line__`."""
    staged: list[list[dict]] = [[] for _ in range(shards)]
    for number, table in enumerate(tables):
        paths = raw_index.stage_ehr_table(table["path"], table["subject_id"], key, shards,
                                          folder / f"table-{number}", "utf-8")
        for k in range(shards):
            staged[k].append({**table, "staged": str(paths[k])})
    return staged


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo exports for 9 subjects plus inputs without a subject and a series spanning two patients."""
    root = tmp_path_factory.mktemp("raw")
    generate_demo(root, n_subjects=9, seed=3, image_size=8, slices=(2, 3))
    (root / "dicom" / "README.txt").write_text("not a DICOM file")
    ct_slice(root / "dicom" / "orphan.dcm", series_uid="7.1", patient_id="")
    ct_slice(root / "dicom" / "mixed" / "IM0", series_uid="7.2", z=0.0, patient_id="PAT-A")
    ct_slice(root / "dicom" / "mixed" / "IM1", series_uid="7.2", z=2.0, patient_id=other_patient())
    (root / "fasta" / "orphans.fa").write_text(">no_subject_here\nACGTACGT\n>S5|ok\n" + "ACGT" * 80 + "\n")
    (root / "fasta" / "broken.fa.gz").write_bytes(b"\x1f\x8b\x08\x00 cut short")
    with open(root / "ehr" / "labs.csv", "ab") as handle:
        handle.write(b",GLUCOSE,5,mg/dL,2020-01-01 10:00\nMRNX,GLUC\xd6SE,5,mg/dL,2020-01-01 10:00\n")
    return root


def ehr_tables(raw: Path) -> list[dict]:
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text())
    return [{**table, "path": str(raw / "ehr" / Path(table["path"]).name)} for table in config["inputs"]["ehr"]]


def run_shards(modality: str, raw: Path, out: Path) -> tuple[list[dict], list[Path]]:
    """Every shard job through its CLI, then `ingest_common.py merge`; return the shard manifests and parts."""
    key = SALT.encode()
    (out / "salt").parent.mkdir(parents=True, exist_ok=True)
    (out / "salt").write_text(SALT)
    staged = stage_tables(ehr_tables(raw), key, SHARDS, out / "staged") if modality == "ehr" else None
    for k in range(SHARDS):
        common_args = ["--shard", str(k), "--shards", str(SHARDS), "--salt-file", str(out / "salt"),
                       "--out-part", str(out / f"part-{k}.parquet"), "--quarantine", str(out / f"q-{k}.parquet"),
                       "--manifest", str(out / f"m-{k}.json"), "--source-map", str(out / "names" / f"shard-{k}.tsv")]
        if modality == "image":
            files = [str(p) for p in common.list_input_files(raw / "dicom")]
            dicom_entry.main(["--input", str(raw / "dicom"), "--files", *files, *common_args, "--image-size", "8"])
        elif modality == "dna":
            files = [str(p) for p in common.list_input_files(raw / "fasta", ingest_fasta.is_fasta)]
            fasta_entry.main(["--input", str(raw / "fasta"), "--files", *files, *common_args,
                               "--subject-regex", REGEX, "--window", "64", "--stride", "64"])
        else:
            ehr_entry.main(["--tables-json", json.dumps(staged[k]), *common_args])
    ingest_manifest.main(["--manifests", *(str(out / f"m-{k}.json") for k in range(SHARDS)),
                 "--quarantines", *(str(out / f"q-{k}.parquet") for k in range(SHARDS)),
                 "--out-manifest", str(out / "manifest.json"), "--out-quarantine", str(out / "quarantine.parquet")])
    manifests = [json.loads((out / f"m-{k}.json").read_text()) for k in range(SHARDS)]
    return manifests, [out / f"part-{k}.parquet" for k in range(SHARDS)]


def run_whole(modality: str, raw: Path, out: Path) -> dict:
    key = SALT.encode()
    if modality == "image":
        return ingest_dicom.ingest_dicom(raw / "dicom", key, out, SHARDS, 8)
    if modality == "dna":
        return ingest_fasta.ingest_fasta(raw / "fasta", key, out, SHARDS, REGEX, 64, 64)
    return ingest_ehr.ingest_ehr(ehr_tables(raw), key, out, SHARDS)


def _rows(path: Path) -> list[tuple]:
    return sorted(tuple(row.values()) for row in pq.read_table(path).to_pylist())


@pytest.mark.parametrize("modality", ["image", "dna", "ehr"])
def test_shard_jobs_and_merge_equal_one_whole_run(raw, tmp_path, modality):
    manifests, parts = run_shards(modality, raw, tmp_path / "shards")
    whole = run_whole(modality, raw, tmp_path / "whole")
    merged = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert merged == whole
    assert len(_rows(tmp_path / "whole" / "quarantine.parquet")) >= 2  # subject-less and bad inputs exist
    for k, part in enumerate(parts):
        shard_table = pq.read_table(part).replace_schema_metadata(None)
        whole_table = pq.read_table(tmp_path / "whole" / f"part-{k}.parquet").replace_schema_metadata(None)
        assert shard_table.equals(whole_table), (modality, k)
        assert manifests[k]["rows_written"] == shard_table.num_rows and manifests[k]["shard"] == k
        assert all(shard_of(s, SHARDS) == k for s in shard_table.column("subject_id").to_pylist())
    shard_rows = [row for k in range(SHARDS) for row in _rows(tmp_path / "shards" / f"q-{k}.parquet")]
    assert sorted(shard_rows) == _rows(tmp_path / "whole" / "quarantine.parquet")  # each refusal once
    assert _rows(tmp_path / "shards" / "quarantine.parquet") == sorted(shard_rows)
    for manifest in manifests:  # every job hashed every input it read
        assert manifest["inputs"] == whole["inputs"]


def test_subjectless_records_are_counted_by_their_files_owner_only(raw, tmp_path):
    manifests, _ = run_shards("image", raw, tmp_path)
    owner = common.unassigned_shard("orphan.dcm", SHARDS)
    # each job's own map in staging turns the keyed names back into paths
    names = common.read_source_maps(sorted((tmp_path / "names").iterdir()))
    quarantines = [[{**r, "source": names[r["source"]]} for r in pq.read_table(tmp_path / f"q-{k}.parquet").to_pylist()]
                   for k in range(SHARDS)]
    holders = [k for k, rows in enumerate(quarantines) if any(r["source"] == "orphan.dcm" for r in rows)]
    assert holders == [owner]
    # a series spanning two patients of two shards: each job refuses its own patient's file
    mixed = {r["source"]: k for k, rows in enumerate(quarantines) for r in rows if r["source"].startswith("mixed/")}
    assert mixed == {"mixed/IM0": shard_of(subject_pseudonym("PAT-A", SALT.encode()), SHARDS),
                     "mixed/IM1": shard_of(subject_pseudonym(other_patient(), SALT.encode()), SHARDS)}
    reasons = {r["reason"] for rows in quarantines for r in rows if r["source"].startswith("mixed/")}
    assert reasons == {"slices of the series disagree on PatientID"}
    assert sum(m["records_in"] for m in manifests) == len(common.list_input_files(raw / "dicom"))


def test_unassigned_shard_is_sha256_of_the_relative_path():
    for path in ("a.fa", "deep/x.dcm", "README"):
        digest = hashlib.sha256(path.encode()).digest()
        assert common.unassigned_shard(path, 7) == int.from_bytes(digest[:8], "big") % 7
    assert {common.unassigned_shard(f"f{i}", 4) for i in range(64)} == {0, 1, 2, 3}


def test_merge_refuses_missing_shards_and_changed_inputs(tmp_path):
    base = {"modality": "dna", "records_in": 1, "records_out": 1, "records_quarantined": 0, "rows_written": 2,
            "inputs": {"a.fa": "aa"}, "shards": 2}
    with pytest.raises(ValueError, match=r"do not cover shards 0\.\.1 once each: got \[0\]"):
        common.combine_manifests([{**base, "shard": 0}])
    with pytest.raises(ValueError, match=r"disagree on inputs\['a\.fa'\]"):
        common.combine_manifests([{**base, "shard": 0}, {**base, "shard": 1, "inputs": {"a.fa": "bb"}}])
    with pytest.raises(RuntimeError, match="record accounting broken"):
        common.combine_manifests([{**base, "shard": 0}, {**base, "shard": 1, "records_out": 0}])
    merged = common.combine_manifests([{**base, "shard": 0, "n_fraction_per_record": {"r1": 0.5}},
                                       {**base, "shard": 1, "n_fraction_per_record": {"r2": 0.0}}])
    assert merged["records_in"] == 2 and merged["n_fraction_per_record"] == {"r1": 0.5, "r2": 0.0}
    assert "shard" not in merged and "shards" not in merged


def test_shard_job_refuses_rows_of_another_shard(tmp_path):
    job = common.ShardJob(1, 2)
    even = next(s for s in range(1, 99) if shard_of(s, 2) == 0)
    rows = pa.table({"subject_id": pa.array([even], pa.int64())})
    with pytest.raises(RuntimeError, match="1 rows of other shards in the output of shard 1"):
        common.write_shard_outputs(tmp_path / "p.parquet", tmp_path / "q.parquet", tmp_path / "m.json", "dna",
                                   rows, job, [], common.RecordCounts(), {}, {},
                                   names=common.SourceNames(b"k" * 32))
    assert not (tmp_path / "p.parquet").exists()
    with pytest.raises(ValueError, match=r"shard must be within 0\.\.shards-1"):
        common.ShardJob(2, 2)


def test_empty_staged_table_still_checks_its_mapped_columns(tmp_path):
    (tmp_path / "labs.csv").write_text("patient_id,charttime,test,value\n")
    (tmp_path / "staged.csv").write_text("patient_id,charttime,test,value,__line__\n")
    table = {"path": str(tmp_path / "labs.csv"), "staged": str(tmp_path / "staged.csv"),
             "subject_id": "patient_id", "time": "charttime",
             "events": [{"code": "LAB//{test}", "numeric_value": "value"}]}
    manifest = ingest_ehr.ingest_ehr_shard([table], b"k" * 64, common.ShardJob(0, 2), tmp_path / "p.parquet",
                                           tmp_path / "q.parquet", tmp_path / "m.json")
    assert (manifest["records_in"], manifest["rows_written"]) == (0, 0)
    (tmp_path / "staged.csv").write_text("patient_id,charttime,test,__line__\n")
    with pytest.raises(ingest_ehr.EhrInputError, match=r"staged\.csv: column 'value' \(numeric_value"):
        ingest_ehr.ingest_ehr_shard([table], b"k" * 64, common.ShardJob(0, 2), tmp_path / "p.parquet",
                                    tmp_path / "q.parquet", tmp_path / "m.json")
    with pytest.raises(ingest_ehr.EhrInputError, match="a shard job needs the table's 'staged' CSV"):
        ingest_ehr.ingest_ehr_shard([{**table, "staged": None}], b"k" * 64, common.ShardJob(0, 2),
                                    tmp_path / "p.parquet", tmp_path / "q.parquet", tmp_path / "m.json")


def test_manifest_job_fails_above_the_max_quarantined_fraction(tmp_path):
    """ingest.max_quarantined_fraction: the merge names modality, counts and top reasons (file names hidden)
    and the shard quarantines, which Snakemake keeps when it deletes the failed job's outputs."""
    empty = pa.table({"subject_id": pa.array([], pa.int64())})
    refused = {0: [common.QuarantineRow("a/IM1.dcm", "file", "missing PatientID"),
                   common.QuarantineRow("a/IM2.dcm", "file", "pixel data of a/IM2.dcm could not be decoded: X")],
               1: [common.QuarantineRow("b/IM3.dcm", "file", "missing PatientID")]}
    for k in range(2):
        counts = common.RecordCounts(records_in=2, records_out=2 - len(refused[k]),
                                     records_quarantined=len(refused[k]))
        common.write_shard_outputs(tmp_path / f"p{k}.parquet", tmp_path / f"q{k}.parquet", tmp_path / f"m{k}.json",
                                   "image", empty, common.ShardJob(k, 2), refused[k], counts,
                                   {f"{'ab'[k]}/IM{i}.dcm": "0" for i in range(1, 4)}, {},
                                   names=common.SourceNames(b"k" * 32))
    args = ["--manifests", str(tmp_path / "m0.json"), str(tmp_path / "m1.json"), "--quarantines",
            str(tmp_path / "q0.parquet"), str(tmp_path / "q1.parquet"), "--out-manifest", str(tmp_path / "m.json"),
            "--out-quarantine", str(tmp_path / "q.parquet")]
    ingest_manifest.main([*args, "--max-quarantined-fraction", "0.75"])  # 3 of 4 is not above 0.75
    with pytest.raises(common.QuarantineLimitError) as error:
        ingest_manifest.main([*args, "--max-quarantined-fraction", "0.5"])
    message = str(error.value)
    assert message.startswith("ingest image: 3 of 4 records quarantined (75%), more than "
                              "ingest.max_quarantined_fraction.image = 0.5. Top reasons: 2 x missing PatientID; "
                              "1 x pixel data of <file> could not be decoded: X. Every refused record")
    assert str(tmp_path / "q0.parquet") in message and "IM2" not in message
