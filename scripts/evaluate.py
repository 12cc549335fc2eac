"""Evaluate one task on its held-out test split: model and baseline metrics with bootstrap CIs,
predictions, and the task's HTML report. Nothing here ever looks at train rows except the baseline's fit.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
import torch

import baseline
import metrics
import predict
from bags import read_labels
from models import load_classifier
from report_task import read_training_log, sex_subgroups, write_task_report

log = logging.getLogger("evaluate")


def scored(frame: pd.DataFrame, classes: list[str], n_boot: int, seed: int) -> dict:
    y, prob, subjects = metrics.prediction_arrays(frame, classes)
    return metrics.bootstrap_metrics(y, prob, clusters=subjects, n_boot=n_boot, seed=seed)


def evaluate_task(task: str, modalities: list[str], model_dir: Path, tokens_root: Path, labels_path: Path,
                  ehr_parts: list[str], n_boot: int, seed: int, out_dir: Path) -> dict:
    model = load_classifier(model_dir)
    if model.spec.modalities != modalities:
        raise ValueError(f"{model_dir} was trained on {model.spec.modalities}, task {task} wants {modalities}")
    classes = model.spec.classes
    data, _ = predict.load_units(model, tokens_root, "test", str(labels_path))
    predictions = predict.predictions_frame(model, data, labelled=True)
    baseline_predictions = baseline.run_baseline(read_labels(labels_path).to_pandas(), tokens_root, modalities,
                                                 classes, seed=seed)
    result = {
        "task": task,
        "n_test": len(predictions),
        "n_subjects_test": int(predictions["subject_id"].nunique()),
        "classes": classes,
        "model": scored(predictions, classes, n_boot, seed),
        "baseline": {"name": baseline.baseline_name(modalities),
                     **scored(baseline_predictions, classes, n_boot, seed)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics.json_safe(result), indent=2, allow_nan=False) + "\n")
    predict.write_predictions(predictions, out_dir / "predictions.parquet", {"task": task, "split": "test"})
    write_task_report(task, result, predictions, classes, out_dir / "report.html",
                      subgroups=sex_subgroups(ehr_parts) if ehr_parts else None,
                      training_log=read_training_log(model_dir / "training.jsonl"),
                      baseline_predictions=baseline_predictions)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--modalities", required=True, help="comma-separated")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--tokens-root", required=True, type=Path)
    parser.add_argument("--labels", required=True, type=Path)
    parser.add_argument("--ehr-parts", nargs="*", default=[], help="ingest/ehr parts, for sex subgroups")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    result = evaluate_task(args.task, args.modalities.split(","), args.model_dir, args.tokens_root, args.labels,
                           args.ehr_parts, args.bootstrap, args.seed, args.out_dir)
    log.info("%s: test AUROC %.3f %s (baseline %.3f) on %d units", args.task, result["model"]["auroc"]["value"],
             result["model"]["auroc"]["ci"], result["baseline"]["auroc"]["value"], result["n_test"])


if __name__ == "__main__":
    main()
