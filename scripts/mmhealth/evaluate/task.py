"""Evaluate one task on its held-out test split: model and baseline metrics with bootstrap CIs, subgroup
metrics, and the test predictions of both. Nothing here looks at train rows except the baseline's fit.
The task's page is drawn from these files by `mmhealth.report.task_page`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmhealth.evaluate import baseline, metrics
from mmhealth.evaluate.subgroups import sex_subgroups, subgroup_metrics
from mmhealth.predict.inference import load_units, predictions_frame, write_predictions
from mmhealth.train.bags import read_labels
from mmhealth.train.models import load_classifier

log = logging.getLogger("evaluate")


@dataclass
class EvalInputs:
    """The files an evaluation job reads, exactly as its rule declares them."""

    model_dir: Path
    labels: Path
    shards: dict[str, dict[str, list[Path]]]  # split (test, and train for the baseline) -> modality -> files
    tokenizers: dict[str, Path]  # modality -> tokenizer folder (the baseline decodes tokens with it)
    ehr_parts: list[Path]  # ingest/ehr parts: the sex subgroup and the EHR baseline; empty without EHR input


@dataclass
class EvalOutputs:
    metrics: Path
    predictions: Path
    baseline_predictions: Path


def scored(frame: pd.DataFrame, classes: list[str], n_boot: int, seed: int) -> dict:
    y, prob, subjects = metrics.prediction_arrays(frame, classes)
    return metrics.bootstrap_metrics(y, prob, clusters=subjects, n_boot=n_boot, seed=seed)


def evaluate_task(task: str, modalities: list[str], inputs: EvalInputs, n_boot: int, seed: int,
                  outputs: EvalOutputs) -> dict:
    model = load_classifier(inputs.model_dir)
    if model.spec.modalities != modalities:
        raise ValueError(f"{inputs.model_dir} was trained on {model.spec.modalities}, task {task} wants {modalities}")
    classes = model.spec.classes
    data, _ = load_units(model, inputs.shards["test"], "test", str(inputs.labels))
    predictions = predictions_frame(model, data, labelled=True)
    fitted = baseline.run_baseline(read_labels(inputs.labels).to_pandas(), inputs.shards, inputs.tokenizers,
                                   modalities, classes, seed=seed, ehr_parts=inputs.ehr_parts)
    baseline_predictions = fitted.predictions
    result = {
        "task": task,
        "n_test": len(predictions),
        "n_subjects_test": int(predictions["subject_id"].nunique()),
        "classes": classes,
        "model": scored(predictions, classes, n_boot, seed),
        "baseline": {"name": fitted.name, "description": fitted.description, "settings": fitted.settings,
                     **scored(baseline_predictions, classes, n_boot, seed)},
        "subgroups": subgroup_metrics(predictions, classes,
                                      sex_subgroups(inputs.ehr_parts) if inputs.ehr_parts else None),
    }
    outputs.metrics.parent.mkdir(parents=True, exist_ok=True)
    outputs.metrics.write_text(json.dumps(metrics.json_safe(result), indent=2, allow_nan=False) + "\n")
    write_predictions(predictions, outputs.predictions, {"task": task, "split": "test"})
    write_predictions(baseline_predictions, outputs.baseline_predictions,
                      {"task": task, "split": "test", "model": result["baseline"]["name"]})
    log.info("%s: test AUROC %.3f %s (baseline %.3f) on %d units", task, result["model"]["auroc"]["value"],
             result["model"]["auroc"]["ci"], result["baseline"]["auroc"]["value"], result["n_test"])
    return result
