"""The transfer gain, measured: each task's test AUROC fine-tuned from this run's pretraining against a fresh
encoder and the classical baseline, paired on the same test subjects.

Reads two finished runs on the same data and pseudonym key (so the same test subjects): `--pretrained` (a
results folder whose tasks use `model.pretrained`) and `--fresh` (the same config without it). Per task:
AUROC with its 95% CI from each run's metrics.json, the baseline's, and the paired difference pretrained -
fresh (DeLong p-value, paired bootstrap CI; `evaluate.compare.compare_auroc`, as evaluation compares a model
with its baseline). JSON to benchmarks/results/transfer.json and a markdown table on stdout.

    .venv/bin/python benchmarks/transfer.py --pretrained results --fresh results_fresh
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_common import bench_parser, write_result  # noqa: E402

from mmhealth.evaluate.compare import compare_auroc  # noqa: E402


def auroc(metrics: dict, side: str) -> dict:
    return {"value": round(metrics[side]["auroc"]["value"], 3), "ci": [round(v, 3) for v in metrics[side]["auroc"]["ci"]]}


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "transfer")
    parser.add_argument("--pretrained", type=Path, required=True, help="results folder of the pretrained run")
    parser.add_argument("--fresh", type=Path, required=True, help="results folder of the fresh-encoder run")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    rows = {}
    for folder in sorted((args.pretrained / "eval").iterdir()):
        task = folder.name
        ours, fresh = (json.loads((r / "eval" / task / "metrics.json").read_text()) for r in (args.pretrained, args.fresh))
        predictions = [pd.read_parquet(r / "eval" / task / "predictions.parquet") for r in (args.pretrained, args.fresh)]
        paired = compare_auroc(*predictions, ours["classes"], args.bootstrap, 0)
        rows[task] = {"fresh": auroc(fresh, "model"), "pretrained": auroc(ours, "model"),
                      "baseline": auroc(ours, "baseline"),
                      "pretrained_minus_fresh": {"value": round(paired["difference"]["value"], 3),
                                                 "ci": [round(v, 3) for v in paired["difference"]["ci"]],
                                                 "p_value": paired["p_value"], "n_subjects": paired["n_subjects"]},
                      "pretrained_minus_baseline": {k: ours["comparisons"]["baseline"][k]
                                                    for k in ("difference", "p_value")}}
    write_result(args.out, {"date": dt.date.today().isoformat(), "pretrained": str(args.pretrained),
                            "fresh": str(args.fresh), "tasks": rows})
    print("| task | fresh | pretrained | baseline | pretrained - fresh (p) | pretrained - baseline (p) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task, r in rows.items():
        d, b = r["pretrained_minus_fresh"], r["pretrained_minus_baseline"]
        print(f"| {task} | {r['fresh']['value']:.3f} {r['fresh']['ci']} | {r['pretrained']['value']:.3f} "
              f"{r['pretrained']['ci']} | {r['baseline']['value']:.3f} | {d['value']:+.3f} (p={d['p_value']:.2f}) | "
              f"{b['difference']['value']:+.3f} (p={b['p_value']:.2f}) |")


if __name__ == "__main__":
    main()
