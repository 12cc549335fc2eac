"""Paired comparison of two models' AUROC on the same test units: the difference with a paired bootstrap CI
(whole subjects resampled, both models scored on each resample) and a two-sided DeLong p-value.

DeLong here is the clustered form (Obuchowski 1997): placement values are summed per subject, so several
units of one subject count as one correlated cluster. With one unit per subject it is exactly DeLong,
DeLong & Clarke-Pearson (1988). Multiclass AUROC is the macro one-vs-rest mean, and its variance comes from
the same per-subject components averaged over classes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from mmhealth.evaluate.metrics import (
    check_predictions,
    prediction_arrays,
    resample_weights,
    scored_classes,
    weighted_auroc,
)

UNIT_KEY = ["subject_id", "record_id"]


def _placements(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, float]:
    """Per unit placement value (V10 for a positive, V01 for a negative; ties count half) and the AUROC."""
    pos, neg = score[positive], score[~positive]
    m, n = len(pos), len(neg)
    all_ranks = rankdata(np.r_[pos, neg])
    v10 = (all_ranks[:m] - rankdata(pos)) / n  # share of negatives each positive beats
    v01 = 1.0 - (all_ranks[m:] - rankdata(neg)) / m  # share of positives that beat each negative
    placement = np.empty(len(score))
    placement[positive], placement[~positive] = v10, v01
    return placement, float(v10.mean())


def delong_difference(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray,
                      clusters: np.ndarray | None = None) -> dict:
    """AUROC(a) - AUROC(b) on the same units, its DeLong standard error and two-sided p-value, and both AUROCs.

    p is None where the variance is zero with a non-zero difference (degenerate; no normal approximation).
    """
    y, pa_ = check_predictions(y, prob_a)
    _, pb = check_predictions(y, prob_b)
    if len(np.unique(y)) < 2:
        return {"difference": math.nan, "se": math.nan, "p_value": math.nan, "auroc_a": math.nan,
                "auroc_b": math.nan}
    groups = np.arange(len(y)) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    n_groups = int(groups.max()) + 1
    classes = scored_classes(y, pa_.shape[1])
    pos_part, neg_part = np.zeros(n_groups), np.zeros(n_groups)
    difference = auroc_a = auroc_b = 0.0
    for c in classes:
        positive = y == c
        place_a, auc_a = _placements(positive, pa_[:, c])
        place_b, auc_b = _placements(positive, pb[:, c])
        delta = auc_a - auc_b
        difference += delta / len(classes)
        auroc_a, auroc_b = auroc_a + auc_a / len(classes), auroc_b + auc_b / len(classes)
        m, n = positive.sum(), (~positive).sum()
        # Per subject: summed placement differences, centred by the subject's share of the difference.
        contrast = place_a - place_b - delta
        pos_part += np.bincount(groups[positive], contrast[positive], n_groups) / (m * len(classes))
        neg_part += np.bincount(groups[~positive], contrast[~positive], n_groups) / (n * len(classes))
    if len(classes) == 1:  # binary: Obuchowski's factors count the subjects holding each class
        k_pos = int((np.bincount(groups[y == classes[0]], minlength=n_groups) > 0).sum())
        k_neg = int((np.bincount(groups[y != classes[0]], minlength=n_groups) > 0).sum())
    else:
        k_pos = k_neg = n_groups
    variance = (k_pos / max(k_pos - 1, 1) * np.sum(pos_part ** 2) + k_neg / max(k_neg - 1, 1) * np.sum(neg_part ** 2)
                + 2 * n_groups / max(n_groups - 1, 1) * np.sum(pos_part * neg_part))
    se = math.sqrt(max(variance, 0.0))
    if se > 1e-12:
        p_value = float(2 * norm.sf(abs(difference) / se))
    else:
        p_value = 1.0 if abs(difference) < 1e-12 else None
    return {"difference": float(difference), "se": se, "p_value": p_value, "auroc_a": float(auroc_a),
            "auroc_b": float(auroc_b)}


def paired_bootstrap_difference(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray,
                                clusters: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                                level: float = 0.95) -> dict:
    """Percentile CI of AUROC(a) - AUROC(b), both scored on the same resamples of whole subjects."""
    y, pa_ = check_predictions(y, prob_a)
    _, pb = check_predictions(y, prob_b)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(y))
    draws = []
    for start in range(0, n_boot, chunk):
        weights = resample_weights(len(y), clusters, min(chunk, n_boot - start), rng)
        draws.append(weighted_auroc(y, pa_, weights) - weighted_auroc(y, pb, weights))
    values = np.concatenate(draws) if draws else np.empty(0)
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    ci = [float(v) for v in np.percentile(values, [tail, 100 - tail])] if len(values) else [math.nan, math.nan]
    return {"ci": ci, "n_boot": len(values)}


def paired_units(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The units both prediction tables hold (same subject and record), with both probability columns."""
    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(record_id=frame["record_id"].fillna("")).drop_duplicates(UNIT_KEY)
    joined = keyed(a)[[*UNIT_KEY, "label", "probabilities"]].merge(
        keyed(b)[[*UNIT_KEY, "label", "probabilities"]], on=UNIT_KEY, suffixes=("", "_b"), validate="1:1")
    mismatch = joined["label"].astype(str) != joined["label_b"].astype(str)
    if mismatch.any():
        raise ValueError(f"{int(mismatch.sum())} paired units carry different labels in the two tables")
    return joined


def compare_auroc(model: pd.DataFrame, other: pd.DataFrame, classes: list[str], n_boot: int, seed: int) -> dict:
    """metrics.json `comparisons.<name>`: model minus other on the units both predicted."""
    joined = paired_units(model, other)
    if joined.empty:  # nothing to pair: say so rather than stop the evaluation
        return {"metric": "auroc", "difference": {"value": math.nan, "ci": [math.nan, math.nan], "n_boot": 0},
                "p_value": None, "se": None, "test": "delong", "n_units": 0, "n_subjects": 0,
                "auroc": {"model": math.nan, "other": math.nan},
                "note": "the two prediction tables share no unit"}
    y, prob_a, subjects = prediction_arrays(joined, classes)
    _, prob_b, _ = prediction_arrays(joined.drop(columns="probabilities").rename(
        columns={"probabilities_b": "probabilities"}), classes)
    test = delong_difference(y, prob_a, prob_b, subjects)
    boot = paired_bootstrap_difference(y, prob_a, prob_b, subjects, n_boot, seed)
    return {"metric": "auroc", "difference": {"value": test["difference"], "ci": boot["ci"], "n_boot": boot["n_boot"]},
            "p_value": test["p_value"], "se": test["se"], "test": "delong",
            "n_units": len(joined), "n_subjects": int(joined["subject_id"].nunique()),
            # both AUROCs on the paired units (each may differ a little from its own, on all its units)
            "auroc": {"model": test["auroc_a"], "other": test["auroc_b"]}}
