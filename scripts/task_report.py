"""Entry point of the `task_report` rule: one task's evaluation page (HTML, figures inlined) and its model
card (TRIPOD+AI items; JSON and Markdown), drawn from the files evaluation wrote; no subject id reaches them."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from mmhealth.report.task_page import write_task_and_card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--metrics", required=True, type=Path, help="eval/<task>/metrics.json")
    parser.add_argument("--predictions", required=True, type=Path, help="eval/<task>/predictions.parquet")
    parser.add_argument("--baseline-predictions", required=True, type=Path,
                        help="eval/<task>/baseline_predictions.parquet")
    parser.add_argument("--training-log", required=True, type=Path, help="models/<task>/training.jsonl")
    parser.add_argument("--labels", type=Path, help="splits/labels/<task>.parquet (the card's split counts)")
    parser.add_argument("--manifests", nargs="*", default=[], type=Path, help="ingest/<modality>/manifest.json")
    parser.add_argument("--model-dir", type=Path, help="models/<task>/ (the card's model settings)")
    parser.add_argument("--accounting", type=Path, help="results/accounting.json (the Data section)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--out-card-json", type=Path, help="model_card.json; needs --labels and --model-dir")
    parser.add_argument("--out-card-md", type=Path, help="model_card.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    write_task_and_card(args.task, json.loads(args.metrics.read_text()), pd.read_parquet(args.predictions),
                        pd.read_parquet(args.baseline_predictions), args.training_log, args.out,
                        card=(args.labels, args.manifests, args.model_dir, args.out_card_json, args.out_card_md),
                        accounting=json.loads(args.accounting.read_text()) if args.accounting else None)

if __name__ == "__main__":
    main()
