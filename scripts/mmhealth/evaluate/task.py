"""Evaluate one task on its held-out test split: model and baseline metrics with bootstrap CIs, the paired
comparison with the baseline, calibration before and after temperature scaling, operating points, subgroup
metrics, and the test predictions of both. Train rows reach only the baseline's fit; validation rows only
the temperature and the thresholds, which are then applied unchanged to test. The task's page is drawn from
these files by `mmhealth.report.task_page`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmhealth.evaluate import baseline, metrics
from mmhealth.evaluate.calibration import calibration_report, saved_temperature
from mmhealth.evaluate.compare import compare_auroc
from mmhealth.evaluate.operating import operating_points
from mmhealth.evaluate.subgroups import subgroup_metrics, subject_attributes
from mmhealth.predict.inference import load_units, predictions_frame, write_predictions
from mmhealth.train.bags import read_labels
from mmhealth.train.models import FusionClassifier, load_classifier

log = logging.getLogger("evaluate")


@dataclass
class EvalInputs:
    """The files an evaluation job reads, exactly as its rule declares them."""

    model_dir: Path
    labels: Path
    shards: dict[str, dict[str, list[Path]]]  # split (test; train: baseline; val: calibration) -> modality -> files
    tokenizers: dict[str, Path]  # modality -> tokenizer folder (the baseline decodes tokens with it)
    ehr_parts: list[Path]  # ingest/ehr parts: sex and age subgroups and the EHR baseline; empty without EHR
    # variant name -> {"predictions": its test predictions, "kind": declared|ablation, "modalities": [...]}
    variants: dict[str, dict] = field(default_factory=dict)


@dataclass
class EvalOutputs:
    metrics: Path
    predictions: Path
    baseline_predictions: Path


def scored(frame: pd.DataFrame, classes: list[str], n_boot: int, seed: int) -> dict:
    y, prob, subjects = metrics.prediction_arrays(frame, classes)
    return metrics.bootstrap_metrics(y, prob, clusters=subjects, n_boot=n_boot, seed=seed)


def validation_fitted(model: FusionClassifier, inputs: EvalInputs, predictions: pd.DataFrame, classes: list[str], n_boot: int,
                      seed: int) -> dict:
    """`calibration` and `operating_points`, fitted on the validation split and applied unchanged to the
    test predictions, which gain a `probabilities_calibrated` column. The temperature is the one saved with
    the model (fitted on the same validation units at the end of fine-tuning). Empty without validation
    units."""
    val_shards = inputs.shards.get("val")
    val = predictions_frame(model, load_units(model, val_shards, "val", str(inputs.labels))[0], labelled=True) \
        if val_shards else pd.DataFrame()
    if val.empty:
        log.warning("no validation units: no temperature scaling and no operating points")
        predictions["probabilities_calibrated"] = predictions["probabilities"]
        return {"calibration": None, "operating_points": {}}
    val_y, val_prob, _ = metrics.prediction_arrays(val, classes)
    y, prob, subjects = metrics.prediction_arrays(predictions, classes)
    calibration, calibrated = calibration_report(val_y, val_prob, y, prob, subjects, n_boot, seed,
                                                 saved_temperature(inputs.model_dir))
    predictions["probabilities_calibrated"] = list(calibrated.astype(np.float32))
    log.info("temperature %.3f fitted on %d validation units (val NLL %.4f -> %.4f)", calibration["temperature"],
             len(val_y), calibration["val_nll"]["before"], calibration["val_nll"]["after"])
    return {"calibration": calibration,
            "operating_points": operating_points(val_y, val_prob, y, prob, subjects, n_boot, seed)}


def variant_comparisons(predictions: pd.DataFrame, variants: dict[str, dict], classes: list[str], n_boot: int,
                        seed: int) -> dict:
    """`comparisons.<variant>`: this model minus each variant on the test units both predicted (the same
    subjects: a variant shares the task's labels and split), with what the variant changed."""
    out = {}
    for name, variant in sorted(variants.items()):
        other = pd.read_parquet(variant["predictions"])
        out[name] = {**compare_auroc(predictions, other, classes, n_boot, seed),
                     "kind": variant.get("kind", "declared"), "modalities": list(variant.get("modalities", [])),
                     "changes": list(variant.get("changes", []))}
        log.info("variant %s: AUROC difference %s (p=%s) on %d subjects", name, out[name]["difference"]["value"],
                 out[name]["p_value"], out[name]["n_subjects"])
    return out


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
    model_scores = scored(predictions, classes, n_boot, seed)
    result = {
        "task": task,
        "n_test": len(predictions),
        "n_subjects_test": int(predictions["subject_id"].nunique()),
        "modalities": modalities,
        "classes": classes,
        "model": model_scores,
        "baseline": {"name": fitted.name, "description": fitted.description, "settings": fitted.settings,
                     **scored(baseline_predictions, classes, n_boot, seed)},
        "comparisons": {"baseline": compare_auroc(predictions, baseline_predictions, classes, n_boot, seed),
                        **variant_comparisons(predictions, inputs.variants, classes, n_boot, seed)},
        **validation_fitted(model, inputs, predictions, classes, n_boot, seed),
        "subgroups": subgroup_metrics(predictions, classes, subject_attributes(inputs.ehr_parts),
                                      model_scores["auroc"]["value"], n_boot, seed),
    }
    outputs.metrics.parent.mkdir(parents=True, exist_ok=True)
    outputs.metrics.write_text(json.dumps(metrics.json_safe(result), indent=2, allow_nan=False) + "\n")
    write_predictions(predictions, outputs.predictions, {"task": task, "split": "test"})
    write_predictions(baseline_predictions, outputs.baseline_predictions,
                      {"task": task, "split": "test", "model": result["baseline"]["name"]})
    log.info("%s: test AUROC %.3f %s (baseline %.3f; difference p=%s) on %d units", task,
             result["model"]["auroc"]["value"], result["model"]["auroc"]["ci"], result["baseline"]["auroc"]["value"],
             result["comparisons"]["baseline"]["p_value"], result["n_test"])
    return result
