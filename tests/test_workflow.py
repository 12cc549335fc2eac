"""The real Snakemake on tiny generated demo data: every stage, the contract's outputs, no re-run, no PHI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from make_demo_data import generate_demo
from workflow_helpers import REPO, SNAKEMAKE, TASKS, snakemake, tiny_config

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    generate_demo(work / "raw", n_subjects=40, seed=1, image_size=16, slices=(4, 6))
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config(work / "raw")))
    snakemake(work, "--cores", "2", "--configfile", "config.yaml")
    return work


def test_every_contract_output_exists(run):
    results = run / "results"
    for modality in ("image", "dna", "ehr"):
        manifest = json.loads((results / "ingest" / modality / "manifest.json").read_text())
        assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
        assert manifest["records_out"] > 0
        assert (results / "ingest" / modality / "quarantine.parquet").exists()
        assert len(list((results / "ingest" / modality).glob("part-*.parquet"))) == 2
    splits = pq.read_table(results / "splits" / "subjects.parquet").to_pandas()
    assert set(splits["split"]) == {"train", "val", "test"} and splits["subject_id"].is_unique
    for modality in ("image", "dna", "text", "ehr"):
        for split in ("train", "val", "test"):
            assert len(list((results / "tokens" / modality / split).glob("shard-*.parquet"))) == 2
    for task in TASKS:
        model = results / "models" / task
        for name in ("labels.json", "training.jsonl", "README.md", "fusion_head.safetensors"):
            assert (model / name).exists(), f"{task}: {name}"
        metrics = json.loads((results / "eval" / task / "metrics.json").read_text())
        assert metrics["task"] == task and metrics["n_test"] > 0 and metrics["n_subjects_test"] > 0
        for side in ("model", "baseline"):
            for name in ("auroc", "auprc", "accuracy", "macro_f1", "brier", "ece"):
                assert set(metrics[side][name]) >= {"value", "ci"}, f"{task} {side} {name}"
        assert metrics["baseline"]["name"].startswith("logistic_regression")
        predictions = pq.read_table(results / "eval" / task / "predictions.parquet").to_pandas()
        assert len(predictions) == metrics["n_test"]
        test_subjects = set(splits.loc[splits["split"] == "test", "subject_id"])
        assert set(predictions["subject_id"]) <= test_subjects  # evaluated on the test split only
        assert (results / "eval" / task / "report.html").stat().st_size > 1000
    assert "composite_risk" in (results / "report.html").read_text()
    assert any((results / "logs").rglob("*.log")) and any((results / "benchmarks").rglob("*.tsv"))


def test_second_dry_run_has_nothing_to_do(run):
    done = snakemake(run, "-n", "--configfile", "config.yaml")
    assert "Nothing to be done" in done.stdout + done.stderr


def _parquet_text(path: Path) -> str:
    table = pq.read_table(path)
    return str(table.schema.metadata) + "\n".join(str(c) for c in table.to_pydict().values())


def test_no_identifier_reaches_results_or_logs(run):
    identifiers = json.loads((run / "raw" / "identifiers.json").read_text())
    needles = {str(v) for values in identifiers.values() for v in (values if isinstance(values, list) else [values])}
    needles = {n for n in needles if len(n) >= 4}
    assert len(needles) > 100
    leaks = []
    for path in (run / "results").rglob("*"):
        if path.is_dir():
            continue
        text = _parquet_text(path) if path.suffix == ".parquet" else path.read_bytes().decode("utf-8", "replace")
        leaks += [(str(path.relative_to(run)), n) for n in needles if n in text]
    assert not leaks, leaks[:10]


def test_unknown_config_key_stops_before_any_job(run, tmp_path):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["tasks"]["lesion_ct"]["finetune"]["epoch"] = 3  # typo of `epochs`
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(run, "-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert done.returncode != 0
    assert "'epoch'" in done.stdout + done.stderr


def test_lint_is_clean():
    done = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
