"""Operating points of a two-class model: thresholds chosen on the validation split, applied unchanged to test.

A unit is called positive when P(positive class) >= threshold. Two rules pick the threshold on validation:
Youden's J (the threshold maximising sensitivity + specificity - 1; the highest such threshold on ties),
and "sensitivity 0.9" (the highest threshold whose validation sensitivity is still at least 0.9, i.e. the
most specific threshold that misses at most one positive in ten). On test each gets sensitivity,
specificity, PPV and NPV with bootstrap CIs over subjects, and its confusion matrix.
"""

from __future__ import annotations

import math

import numpy as np

from mmhealth.evaluate.metrics import check_predictions, resample_weights

TARGET_SENSITIVITY = 0.9
RULES = {"youden": "Youden's J on validation",
         "sensitivity_0.9": f"highest validation threshold with sensitivity >= {TARGET_SENSITIVITY}"}


def _rates(positive: np.ndarray, called: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    tp, fn = w @ (positive & called), w @ (positive & ~called)
    fp, tn = w @ (~positive & called), w @ (~positive & ~called)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                "ppv": tp / (tp + fp), "npv": tn / (tn + fn)}


def choose_thresholds(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """{rule: threshold} from validation labels (1 = positive) and P(positive); NaN without both classes."""
    positive = np.asarray(y) == 1
    if positive.all() or not positive.any():
        return {rule: math.nan for rule in RULES}
    candidates = np.unique(score)[::-1]  # descending: the first maximum is the highest threshold
    called = score[None, :] >= candidates[:, None]
    sensitivity = (called & positive).sum(axis=1) / positive.sum()
    specificity = (~called & ~positive).sum(axis=1) / (~positive).sum()
    youden = candidates[int(np.argmax(sensitivity + specificity - 1))]
    reaching = np.flatnonzero(sensitivity >= TARGET_SENSITIVITY - 1e-12)
    return {"youden": float(youden), "sensitivity_0.9": float(candidates[reaching[0]])}


def operating_point(y: np.ndarray, score: np.ndarray, threshold: float, clusters: np.ndarray | None,
                    n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Test sensitivity, specificity, PPV, NPV ({"value", "ci"}) and the confusion matrix at `threshold`."""
    positive, called = np.asarray(y) == 1, np.asarray(score) >= threshold
    point = {k: float(v[0]) for k, v in _rates(positive, called, np.ones((1, len(positive)))).items()}
    weights = resample_weights(len(positive), clusters, n_boot, np.random.default_rng(seed))
    draws = _rates(positive, called, weights)
    tail = (1 - level) / 2 * 100
    out: dict = {"threshold": float(threshold)}
    for name, values in draws.items():
        values = values[np.isfinite(values)]
        ci = ([float(v) for v in np.percentile(values, [tail, 100 - tail])]
              if len(values) and math.isfinite(point[name]) else [math.nan, math.nan])
        out[name] = {"value": point[name], "ci": ci}
    out["confusion"] = {"tp": int((positive & called).sum()), "fp": int((~positive & called).sum()),
                        "tn": int((~positive & ~called).sum()), "fn": int((positive & ~called).sum())}
    return out


def operating_points(val_y: np.ndarray, val_prob: np.ndarray, test_y: np.ndarray, test_prob: np.ndarray,
                     test_clusters: np.ndarray, n_boot: int, seed: int) -> dict:
    """metrics.json `operating_points`: per rule, the validation threshold and what it gives on test; empty
    for more than two classes (no single threshold)."""
    val_y, val_prob = check_predictions(val_y, val_prob)
    test_y, test_prob = check_predictions(test_y, test_prob)
    if test_prob.shape[1] != 2:
        return {}
    thresholds = choose_thresholds(val_y, val_prob[:, 1])
    out = {}
    for rule, threshold in thresholds.items():
        if not math.isfinite(threshold):
            out[rule] = {"rule": RULES[rule], "threshold": None}
            continue
        val = _rates(val_y == 1, val_prob[:, 1] >= threshold, np.ones((1, len(val_y))))
        out[rule] = {"rule": RULES[rule], "chosen_on": "val",
                     "val": {k: float(v[0]) for k, v in val.items()},
                     **operating_point(test_y, test_prob[:, 1], threshold, test_clusters, n_boot, seed)}
    return out
