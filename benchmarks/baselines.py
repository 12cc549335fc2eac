"""The cost of each demo task's baseline against its model's training time, in one process on one core.

Runs `mmhealth.evaluate.baseline.run_baseline` (features from the token shards and ingested EHR events,
CV selection on train, refit, test predictions) for every task of the config on the outputs of a finished
run, and reads the task's training time from Snakemake's benchmark file (results/benchmarks/train/<task>.tsv,
column `s`). Target: baseline time <= 0.1 x training time. Best of --repeats runs. Printed as a table and
written to benchmarks/results/baselines.json.

    .venv/bin/python benchmarks/baselines.py [--config config/config.yaml] [--results results] [--repeats 1]
"""

from __future__ import annotations

import os

# One core, before numpy, scipy and tokenizers start their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from mmhealth.evaluate.baseline import run_baseline  # noqa: E402
from mmhealth.evaluate.metrics import point_metrics  # noqa: E402

TARGET = 0.1


def task_inputs(results: Path, task: str, modalities: list[str]) -> dict:
    """The files the task's evaluation job is handed (the benchmark may glob: it is not a rule)."""
    return {"labels": pq.read_table(results / "splits" / "labels" / f"{task}.parquet").to_pandas(),
            "shards": {split: {m: sorted((results / "tokens" / m / split).glob("shard-*.parquet")) for m in modalities}
                       for split in ("train", "test")},
            "tokenizers": {m: results / "tokens" / m / "tokenizer" for m in modalities},
            "ehr_parts": sorted((results / "ingest" / "ehr").glob("part-*.parquet"))}


def training_seconds(results: Path, task: str) -> float | None:
    path = results / "benchmarks" / "train" / f"{task}.tsv"
    return float(pd.read_csv(path, sep="\t")["s"].iloc[-1]) if path.exists() else None


def bench_task(results: Path, task: str, modalities: list[str], repeats: int) -> dict:
    inputs = task_inputs(results, task, modalities)
    classes = json.loads((results / "models" / task / "labels.json").read_text())["classes"] \
        if (results / "models" / task / "labels.json").exists() else sorted(inputs["labels"]["label"].astype(str).unique())
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run_baseline(inputs["labels"], inputs["shards"], inputs["tokenizers"], modalities, classes,
                              ehr_parts=inputs["ehr_parts"])
        best = min(best, time.perf_counter() - start)
    y = np.array([classes.index(label) for label in result.predictions["label"]])
    auroc = point_metrics(y, np.array(result.predictions["probabilities"].tolist()))["auroc"]
    train = training_seconds(results, task)
    return {"task": task, "modalities": modalities, "baseline_s": round(best, 2), "training_s": train,
            "ratio": round(best / train, 3) if train else None, "test_auroc": round(float(auroc), 4),
            "baseline": result.name, "description": result.description}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tasks", nargs="*", help="default: every task of the config")
    args = parser.parse_args(argv)
    tasks = yaml.safe_load(args.config.read_text())["tasks"]
    rows = [bench_task(args.results, task, tasks[task]["modalities"], args.repeats) for task in args.tasks or tasks]
    print(f"{'task':<16}{'baseline s':>11}{'training s':>11}{'ratio':>7}  target <= {TARGET}  test AUROC")
    for row in rows:
        verdict = "n/a" if row["ratio"] is None else "met" if row["ratio"] <= TARGET else "MISSED"
        print(f"{row['task']:<16}{row['baseline_s']:>11.2f}{row['training_s'] or float('nan'):>11.2f}"
              f"{row['ratio'] or float('nan'):>7.3f}  {verdict:<16}{row['test_auroc']:.3f}  {row['description']}")
    out = REPO / "benchmarks" / "results" / "baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "python": platform.python_version(), "cpu_threads": 1, "tasks": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
