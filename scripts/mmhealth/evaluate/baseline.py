"""The classical baseline beside each model: the standard scikit-learn pipeline per modality, tuned by
cross-validation on the train split only, and evaluated on the test split only.

text: TF-IDF word 1-2-grams (sublinear tf), optionally with character 2-5-grams, + logistic regression over C.
dna: k-mer counts for k = 3..6 with TF-IDF or L2 normalisation + logistic regression over C.
ehr: per-code count, last and mean value with missing indicators, age and sex (from the ingested events) +
logistic regression over C or gradient boosting, the better kept.
image: HU histogram, first-order statistics and texture per bag + logistic regression or gradient boosting.
Several modalities: each modality's features chosen alone, then their concatenation with the same choice of
model. A unit's features come from the same bag of rows the model pools (`baseline_bags`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmhealth.core.modalities import MODALITIES
from mmhealth.evaluate import dna_baseline, ehr_baseline, image_baseline, text_baseline
from mmhealth.evaluate.baseline_bags import label_units
from mmhealth.evaluate.baseline_select import Choice, Variant, choose, describe, fit_predict

log = logging.getLogger("baseline")

# Feature builders; a job's code inputs list only its own modalities' modules (workflow/rules/code.smk).
# EHR features come from the ingested events instead (ehr_baseline.ehr_variants).
BUILDERS = {"text": text_baseline.text_variants, "dna": dna_baseline.dna_variants,
            "image": image_baseline.image_variants}


@dataclass
class BaselineResult:
    """Test-split predictions of the baseline and what it is: name, one sentence, chosen settings."""

    predictions: pd.DataFrame  # subject_id, record_id, label, predicted, probabilities
    name: str
    description: str
    settings: dict


def modality_variants(modality: str, shards: dict[str, dict[str, list[Path]]], tokenizers: dict[str, Path],
                      units: dict[str, list], ehr_parts: Sequence[Path]) -> tuple[list[Variant], dict[str, np.ndarray]]:
    """The feature variants of one modality for the train and test units, and which units have rows."""
    if modality == "ehr":
        return ehr_baseline.ehr_variants(ehr_parts, units)
    paths = {split: shards[split][modality] for split in ("train", "test")}
    for split, files in paths.items():
        if not files:
            raise FileNotFoundError(f"no {modality} {split} token shards given")
    return BUILDERS[modality](paths, units, Path(tokenizers[modality]))


def _rows(variants: list[Variant], keep: dict[str, np.ndarray]) -> list[Variant]:
    """The variants restricted to the kept train and test units."""
    return [Variant(v.modality, v.name, v.phrase, v.settings, v.train[keep["train"]], v.test[keep["test"]],
                    v.transform, v.dense) for v in variants]


def select(by_modality: dict[str, list[Variant]], y: np.ndarray, seed: int) -> Choice:
    """One modality: its best variant and model by CV. Several: each modality's best variant alone, then the
    model for their concatenation; gradient boosting is a candidate for dense features and, in a fusion,
    for every concatenation without text."""
    if len(by_modality) == 1:
        variants = next(iter(by_modality.values()))
        return choose([[v] for v in variants], y, seed, boosting=all(v.dense for v in variants))
    chosen, tried, cache = [], [], {}  # the cache: each variant's per-fold transforms, reused in the fusion
    for variants in by_modality.values():
        alone = choose([[v] for v in variants], y, seed, boosting=all(v.dense for v in variants), cache=cache)
        chosen += alone.variants
        tried += alone.tried
    # k-mer counts (at most 4^6 columns) densify fine for boosting; hashed text n-grams do not.
    fused = choose([chosen], y, seed, boosting=all(v.modality != "text" for v in chosen), cache=cache)
    fused.tried = tried + fused.tried
    return fused


def run_baseline(labels: pd.DataFrame, shards: dict[str, dict[str, list[Path]]], tokenizers: dict[str, Path],
                 modalities: Sequence[str], classes: list[str], seed: int = 0,
                 ehr_parts: Sequence[Path] = ()) -> BaselineResult:
    """The baseline fitted on the train split and its test-split predictions; `shards` is split -> modality ->
    token shard files, `tokenizers` modality -> folder, `ehr_parts` the ingested EHR events (EHR features).
    Units with rows in no modality are left out on both splits, as the model's bags leave them out."""
    unknown_modalities = set(modalities) - set(MODALITIES)
    if unknown_modalities or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    train, test = labels[labels["split"] == "train"], labels[labels["split"] == "test"]
    if train.empty or test.empty:
        raise ValueError(f"need train and test labels, got {len(train)} train and {len(test)} test rows")
    index = {name: k for k, name in enumerate(classes)}
    unknown = sorted(set(labels["label"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"labels not among the classes {classes}: {unknown[:5]}")
    units = {"train": label_units(train), "test": label_units(test)}
    by_modality, has_rows = {}, []
    for modality in modalities:
        by_modality[modality], present = modality_variants(modality, shards, tokenizers, units, ehr_parts)
        has_rows.append(present)
    keep = {split: np.column_stack([p[split] for p in has_rows]).any(axis=1) for split in units}
    if not keep["train"].all() or not keep["test"].all():
        log.warning("%d train and %d test units have no rows in %s and are left out",
                    (~keep["train"]).sum(), (~keep["test"]).sum(), list(modalities))
    by_modality = {m: _rows(v, keep) for m, v in by_modality.items()}
    train, test = train[keep["train"]], test[keep["test"]]
    test_units = [u for u, k in zip(units["test"], keep["test"], strict=True) if k]
    train_y = train["label"].astype(str).map(index).to_numpy(np.int64)
    if len(np.unique(train_y)) == 1:
        log.warning("train split holds a single class (%s); the baseline predicts it for every row", classes[train_y[0]])
        prob = np.zeros((len(test), len(classes)))
        prob[:, train_y[0]] = 1.0
        choice = None
    else:
        choice = select(by_modality, train_y, seed)  # train rows only: no test row reaches a choice
        prob = fit_predict(choice, train_y, len(classes), seed)
        log.info("baseline: %s", describe(choice))
    predictions = pd.DataFrame({
        "subject_id": test["subject_id"].to_numpy(np.int64),
        "record_id": [u[1] for u in test_units],
        "label": test["label"].astype(str).to_numpy(),
        "predicted": [classes[k] for k in prob.argmax(axis=1)],
        "probabilities": [row.tolist() for row in prob],
    })
    return result(predictions, choice, classes[train_y[0]] if choice is None else None)


def result(predictions: pd.DataFrame, choice: Choice | None, constant: str | None) -> BaselineResult:
    """The result with its name, sentence and settings (a constant prediction when train has one class)."""
    if choice is None:
        return BaselineResult(predictions, "constant_majority_class",
                              f"Constant prediction of '{constant}', the only class in the train split", {})
    name = "_".join([*(v.name for v in choice.variants), choice.family])
    settings = {"features": {v.modality: v.settings for v in choice.variants}, "model": choice.family,
                "params": choice.params, "cv_folds": choice.cv_folds, "cv_log_loss": choice.cv_log_loss,
                "settings_tried": len(choice.tried), "selected_on": "train split only"}
    return BaselineResult(predictions, name, describe(choice), settings)
