"""Entry point of the `task_report` rule: one task's evaluation page (HTML, figures inlined), drawn from the
files evaluation wrote; no subject id reaches it."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from mmhealth.report.task_page import read_training_log, write_task_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--metrics", required=True, type=Path, help="eval/<task>/metrics.json")
    parser.add_argument("--predictions", required=True, type=Path, help="eval/<task>/predictions.parquet")
    parser.add_argument("--baseline-predictions", required=True, type=Path,
                        help="eval/<task>/baseline_predictions.parquet")
    parser.add_argument("--training-log", required=True, type=Path, help="models/<task>/training.jsonl")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    metrics = json.loads(args.metrics.read_text())
    write_task_report(args.task, metrics, pd.read_parquet(args.predictions), metrics["classes"], args.out,
                      read_training_log(args.training_log), pd.read_parquet(args.baseline_predictions))


if __name__ == "__main__":
    main()
