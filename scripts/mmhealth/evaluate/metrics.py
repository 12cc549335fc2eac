"""Classification metrics for the test set, with bootstrap confidence intervals (rows or subjects resampled).

Point estimates come from scikit-learn. The bootstrap expresses each resample as a vector of row weights
(how often each row was drawn), so every metric is a few matrix products over all resamples at once; the
weighted formulas equal scikit-learn's on unit weights (tests check this).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    roc_auc_score,
)

log = logging.getLogger("metrics")

METRICS = ("auroc", "auprc", "accuracy", "macro_f1", "brier", "ece")
# Metrics that need both classes (one-vs-rest: every class of the test set) in a resample.
RANKING_METRICS = ("auroc", "auprc")
ECE_BINS = 10
# Bound the weight matrix of one bootstrap chunk (resamples x rows) to ~16 MB of float64.
CHUNK_CELLS = 2_000_000


def check_predictions(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"prob must have shape (n, C) with C >= 2, got {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"y_true must have shape ({len(p)},), got {y.shape}")
    if len(y) == 0:
        raise ValueError("no rows to evaluate")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true must hold class indices 0..{p.shape[1] - 1}")
    if not np.isfinite(p).all():
        raise ValueError("prob holds NaN or infinite values")
    return y.astype(np.int64), p


def scored_classes(y: np.ndarray, n_classes: int) -> list[int]:
    """Classes a ranking metric is averaged over: the positive class if binary, else every class present."""
    return [1] if n_classes == 2 else [int(c) for c in np.unique(y)]


def bin_index(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Equal-width bins (lo, hi] on [0, 1]; 0 falls in the first bin."""
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.digitize(confidence, inner_edges, right=True)


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of max probability: |accuracy - mean confidence| weighted by bin size."""
    y, p = check_predictions(y_true, prob)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = bin_index(confidence, n_bins)
    gap = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            gap += abs(correct[in_bin].sum() - confidence[in_bin].sum())
    return float(gap / len(y))


def calibration_curve(y_true: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Reliability-plot data over non-empty bins: mean predicted value, observed frequency, row count.

    Binary: predicted P(class 1) against the fraction of class 1. Multiclass: max probability (confidence)
    against accuracy, the same quantity the ECE measures.
    """
    y, p = check_predictions(y_true, prob)
    if p.shape[1] == 2:
        predicted, observed = p[:, 1], (y == 1).astype(np.float64)
    else:
        predicted, observed = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    bins = bin_index(predicted, n_bins)
    curve: dict[str, list[float]] = {"predicted": [], "observed": [], "count": []}
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            curve["predicted"].append(float(predicted[in_bin].mean()))
            curve["observed"].append(float(observed[in_bin].mean()))
            curve["count"].append(float(in_bin.sum()))
    return curve


def point_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """auroc, auprc (macro one-vs-rest if multiclass), accuracy, macro_f1, brier, ece; NaN where undefined.

    auroc/auprc are NaN when y_true holds a single class. Multiclass macro averages run over the classes
    present in y_true (auroc/auprc) or in y_true or the predictions (macro_f1, as scikit-learn does).
    """
    y, p = check_predictions(y_true, prob)
    n_classes = p.shape[1]
    predicted = p.argmax(axis=1)
    out: dict[str, float] = {"auroc": math.nan, "auprc": math.nan}
    if len(np.unique(y)) > 1:
        classes = scored_classes(y, n_classes)
        out["auroc"] = float(np.mean([roc_auc_score(y == c, p[:, c]) for c in classes]))
        out["auprc"] = float(np.mean([average_precision_score(y == c, p[:, c]) for c in classes]))
    out["accuracy"] = float(accuracy_score(y, predicted))
    out["macro_f1"] = float(f1_score(y, predicted, average="macro", zero_division=0))
    if n_classes == 2:
        out["brier"] = float(brier_score_loss(y == 1, p[:, 1]))
    else:
        out["brier"] = float(np.mean(np.sum((p - np.eye(n_classes)[y]) ** 2, axis=1)))
    out["ece"] = expected_calibration_error(y, p)
    return out


def _weighted_ranking(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """AUROC and average precision of one binary problem for each row of `weights` (resample x row counts).

    Rows are sorted by score once; tied scores form one threshold, as in scikit-learn.
    """
    order = np.argsort(-score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    pos_w = np.add.reduceat(w * positive[order], starts, axis=1)
    neg_w = np.add.reduceat(w * ~positive[order], starts, axis=1)
    n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    cum_pos, cum_neg = np.cumsum(pos_w, axis=1), np.cumsum(neg_w, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Each positive beats the negatives scored below it and ties half of those at its own score.
        beaten = (pos_w * (n_neg[:, None] - cum_neg) + 0.5 * pos_w * neg_w).sum(axis=1)
        auroc = beaten / (n_pos * n_neg)
        precision = np.where(cum_pos + cum_neg > 0, cum_pos / np.maximum(cum_pos + cum_neg, 1e-300), 0.0)
        auprc = (pos_w * precision).sum(axis=1) / n_pos
    undefined = (n_pos == 0) | (n_neg == 0)
    auroc[undefined] = np.nan
    auprc[undefined] = np.nan
    return auroc, auprc


def weighted_metrics(y_true: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of `weights` (shape resamples x n, row multiplicities); NaN where undefined.

    Unit weights reproduce `point_metrics`. auroc/auprc are NaN for a resample lacking any class of y_true.
    """
    y, p = check_predictions(y_true, prob)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_classes = p.shape[1]
    total = w.sum(axis=1)
    predicted = p.argmax(axis=1)
    correct = (predicted == y).astype(np.float64)
    onehot_true = np.eye(n_classes)[y]
    onehot_pred = np.eye(n_classes)[predicted]
    out: dict[str, np.ndarray] = {}

    present = np.unique(y)
    if len(present) > 1:
        per_class = [_weighted_ranking(y == c, p[:, c], w) for c in scored_classes(y, n_classes)]
        complete = (w @ onehot_true[:, present] > 0).all(axis=1)
        for k, name in enumerate(RANKING_METRICS):
            values = np.mean([pc[k] for pc in per_class], axis=0)
            out[name] = np.where(complete, values, np.nan)
    else:
        out["auroc"] = out["auprc"] = np.full(len(w), np.nan)

    out["accuracy"] = w @ correct / total
    tp, n_true, n_pred = w @ (onehot_true * onehot_pred), w @ onehot_true, w @ onehot_pred
    support = n_true + n_pred
    f1 = np.where(support > 0, 2 * tp / np.maximum(support, 1e-300), np.nan)
    out["macro_f1"] = np.nanmean(np.where(support > 0, f1, np.nan), axis=1)
    # Binary Brier is on P(class 1) alone (scikit-learn's convention); multiclass sums over classes.
    squared = (p[:, 1] - (y == 1)) ** 2 if n_classes == 2 else np.sum((p - onehot_true) ** 2, axis=1)
    out["brier"] = w @ squared / total
    confidence = p.max(axis=1)
    in_bin = np.eye(ECE_BINS)[bin_index(confidence)]
    out["ece"] = np.abs(w @ (in_bin * correct[:, None]) - w @ (in_bin * confidence[:, None])).sum(axis=1) / total
    return out


def weighted_auroc(y_true: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (macro one-vs-rest if multiclass) for each row of `weights`; NaN where a class is missing."""
    y, p = check_predictions(y_true, prob)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    present = np.unique(y)
    if len(present) < 2:
        return np.full(len(w), np.nan)
    values = np.mean([_weighted_ranking(y == c, p[:, c], w)[0] for c in scored_classes(y, p.shape[1])], axis=0)
    complete = (w @ np.eye(p.shape[1])[y][:, present] > 0).all(axis=1)
    return np.where(complete, values, np.nan)


def resample_weights(n_rows: int, clusters: np.ndarray | None, n_boot: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Row multiplicities of `n_boot` bootstrap resamples; whole clusters are drawn when clusters are given."""
    if clusters is None:
        return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=n_boot).astype(np.float64)
    _, cluster_of_row = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(cluster_of_row.max()) + 1
    drawn = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    return drawn[:, cluster_of_row].astype(np.float64)


def bootstrap_metrics(y_true: np.ndarray, prob: np.ndarray, clusters: np.ndarray | None = None,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Point estimate and percentile bootstrap CI of every metric: {metric: {"value", "ci", "n_boot"}}.

    With `clusters` (subject ids, one per row) whole clusters are resampled, so rows of one subject stay
    together. Resamples where a metric is undefined (auroc/auprc without every class) are skipped and
    `n_boot` says how many were used. Values are Python floats; NaN only where undefined.
    """
    y, p = check_predictions(y_true, prob)
    if clusters is not None and len(clusters) != len(y):
        raise ValueError(f"clusters must have one entry per row ({len(y)}), got {len(clusters)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // len(y))
    draws: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, n_boot, chunk):
        weights = resample_weights(len(y), clusters, min(chunk, n_boot - start), rng)
        for name, values in weighted_metrics(y, p, weights).items():
            draws[name].append(values)
    point = point_metrics(y, p)
    tail = (1 - level) / 2 * 100
    result: dict[str, dict[str, Any]] = {}
    for name in METRICS:
        values = np.concatenate(draws[name]) if draws[name] else np.empty(0)
        values = values[np.isfinite(values)]
        if len(values) and math.isfinite(point[name]):
            lo, hi = np.percentile(values, [tail, 100 - tail])
            ci = [float(lo), float(hi)]
        else:
            ci = [math.nan, math.nan]
        result[name] = {"value": point[name], "ci": ci, "n_boot": len(values)}
    return result


def json_safe(obj: Any) -> Any:
    """Copy of obj that `json.dumps(..., allow_nan=False)` accepts: NaN/inf become None, numpy becomes Python."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def prediction_arrays(predictions: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class index per row, probability matrix, subject id per row) from a predictions table."""
    index = {name: k for k, name in enumerate(classes)}
    unknown = sorted(set(predictions["label"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"labels not among the classes {classes}: {unknown[:5]}")
    y = predictions["label"].astype(str).map(index).to_numpy(dtype=np.int64)
    prob = np.array([np.asarray(row, dtype=np.float64) for row in predictions["probabilities"]])
    if prob.ndim != 2 or prob.shape[1] != len(classes):
        raise ValueError(f"probabilities must have {len(classes)} entries per row (one per class)")
    return y, prob, predictions["subject_id"].to_numpy()
