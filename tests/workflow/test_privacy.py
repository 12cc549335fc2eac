"""The real workflow (through `tokenize`) on a demo export with identifiers planted where hospital exports hide
them: folder and file names, every DICOM hiding place, FASTA descriptions, undeclared CSV columns, notes.
Every Parquet file is decoded and every JSON, log and other file under results/ (job logs included) is
read: none of the planted identifiers may appear; the operator's map in staging leads back to the files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from workflow_helpers import snakemake, tiny_config

from mmhealth.core.pseudonym import date_shift_days, load_or_create_salt, subject_pseudonym
from mmhealth.demo.data import generate_demo
from mmhealth.demo.phi_corpus import plant_phi
from mmhealth.ingest import common

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[str]]:
    work = tmp_path_factory.mktemp("privacy")
    generate_demo(work / "raw", n_subjects=16, seed=3, image_size=16, slices=(2, 3))
    needles = plant_phi(work / "raw")
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config(work / "raw")))
    snakemake(work, "tokenize", "--cores", "2", "--configfile", "config.yaml")
    return work, needles


def _texts(path: Path) -> list[str]:
    """The file's bytes as text, and for Parquet every decoded value and the schema's metadata as well."""
    texts = [path.read_bytes().decode("latin-1")]
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        texts.append(json.dumps(table.to_pylist(), default=str) + str(table.schema.metadata))
    return texts


def test_no_planted_identifier_reaches_results_or_logs(planted):
    work, needles = planted
    assert len(needles) > 100
    # Snakemake's own log (.snakemake/log, in the working folder beside the raw data like staging) lists every
    # job's input paths by design; results/ and the job logs under it must not
    files = [p for p in (work / "results").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".log" for p in files)
    leaks = [(str(p.relative_to(work)), n) for p in files for text in _texts(p) for n in needles if n in text]
    assert not leaks, leaks[:10]


def test_quarantined_files_are_named_by_keyed_hashes_the_operator_can_resolve(planted):
    work, _ = planted
    names = common.read_source_maps((work / ".mmhealth_staging" / "source_names").rglob("*.tsv"))
    for modality in ("image", "dna"):
        rows = pq.read_table(work / "results" / "ingest" / modality / "quarantine.parquet").to_pylist()
        assert rows and all(r["source"].startswith("src-") for r in rows)
        paths = [names[r["source"]] for r in rows]  # the planted PHI-named files, found again from staging
        assert all("Quillon" in p for p in paths), paths


def test_ehr_dates_moved_by_at_least_the_minimum(planted):
    work, _ = planted
    config = yaml.safe_load((work / "config.yaml").read_text())
    key = load_or_create_salt(work / config["privacy"]["salt_file"])
    raw = pd.read_csv(work / "raw" / "ehr" / "patients.csv", dtype=str)
    events = pd.concat(pq.read_table(p).to_pandas() for p in (work / "results" / "ingest" / "ehr").glob("part-*"))
    births = events[events.code == "MEDS_BIRTH"].set_index("subject_id")["time"]
    for patient, birth in zip(raw["patient_id"], raw["birth_date"], strict=True):
        subject = subject_pseudonym(patient, key)
        moved = (births[subject] - pd.Timestamp(birth)).days
        assert moved == date_shift_days(subject, key, 30) and abs(moved) >= 30
