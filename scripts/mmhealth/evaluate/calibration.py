"""Can the probabilities be read as risks? Temperature scaling fitted on the validation split, and calibration
measures with bootstrap CIs before and after it on the test split.

Temperature scaling divides the logits by one number T fitted by minimising the validation negative
log-likelihood (Guo et al. 2017). The log of a softmax probability is the logit minus a per-row constant, so
T applies to saved probabilities exactly as to logits; it never changes the predicted class, and for two
classes it keeps the ranking (AUROC) too. Measures: ECE over 10 equal-width and 10 equal-mass (adaptive)
bins of the top-class probability, Brier, NLL, and for two classes the calibration slope (logistic
regression of the outcome on logit(p)) and calibration-in-the-large intercept (slope fixed at 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from mmhealth.evaluate.metrics import ECE_BINS, bin_index, check_predictions, resample_weights

LOG_T_BOUNDS = (-4.0, 4.0)  # T between ~0.02 and ~55: wider is never a useful model
PROB_FLOOR = 1e-12  # saved float32 probabilities can round to 0
NEWTON_STEPS = 50
CALIBRATION_MEASURES = ("ece", "ece_adaptive", "brier", "nll", "slope", "intercept")
CALIBRATION_FILE = "calibration.json"  # in the model folder: the temperature fine-tuning fitted on validation


def saved_temperature(model_dir: str | Path) -> tuple[float, str | None] | None:
    """(T, note) saved with the model by fine-tuning; None for a model folder without one."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return float(saved["temperature"]), saved.get("note")


def _log_prob(prob: np.ndarray) -> np.ndarray:
    return np.log(np.clip(prob, PROB_FLOOR, 1.0))


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(prob) / T): the probabilities a model would give with its logits divided by T."""
    scaled = _log_prob(np.asarray(prob, dtype=np.float64)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    out = np.exp(scaled)
    return out / out.sum(axis=1, keepdims=True)


def nll(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    y, p = check_predictions(y, prob)
    return float(-np.mean(_log_prob(p[np.arange(len(y)), y])))


def fit_temperature(y: np.ndarray, prob: np.ndarray) -> tuple[float, str | None]:
    """(T minimising the NLL of (y, prob) after scaling, None), or (1.0, why) where no T can be fitted: one
    class only, no gain, or no finite optimum (every validation unit classified correctly: the NLL keeps
    falling as T -> 0, and such a T would turn every probability into 0 or 1)."""
    y, p = check_predictions(y, prob)
    if len(np.unique(y)) < 2:
        return 1.0, "validation holds one class"
    if (p.argmax(axis=1) == y).all():  # every unit right: the log loss keeps falling as T -> 0
        return 1.0, "no finite optimum: every validation unit is classified correctly; left at T = 1"
    result = minimize_scalar(lambda log_t: nll(y, apply_temperature(p, math.exp(log_t))), bounds=LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-5})
    if min(abs(result.x - b) for b in LOG_T_BOUNDS) < 0.3:
        return 1.0, "the optimum lies at the bounds of T; left at T = 1"
    if result.fun >= nll(y, p) - 1e-9:  # a flat optimum should not move probabilities
        return 1.0, "scaling does not lower the validation log loss"
    return float(math.exp(result.x)), None


def _adaptive_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Equal-mass bins: rows ranked by confidence and cut into n_bins groups of (nearly) equal size."""
    order = np.argsort(confidence, kind="stable")
    bins = np.empty(len(confidence), dtype=np.int64)
    bins[order] = np.minimum(np.arange(len(confidence)) * n_bins // max(len(confidence), 1), n_bins - 1)
    return bins


def _binned_ece(bins: np.ndarray, correct: np.ndarray, confidence: np.ndarray, w: np.ndarray,
                n_bins: int) -> np.ndarray:
    in_bin = np.eye(n_bins)[bins]
    gap = np.abs(w @ (in_bin * correct[:, None]) - w @ (in_bin * confidence[:, None])).sum(axis=1)
    return gap / w.sum(axis=1)


def _logistic_fit(y: np.ndarray, x: np.ndarray, w: np.ndarray, slope_free: bool) -> np.ndarray:
    """Weighted logistic regressions, one per row of w: (intercept, slope) of y ~ a + b x, or the intercept
    of y ~ a + offset(x). NaN where Newton does not converge (separable resamples)."""
    design = np.column_stack([np.ones_like(x), x]) if slope_free else np.ones((len(x), 1))
    offset = np.zeros_like(x) if slope_free else x
    beta = np.zeros((len(w), design.shape[1]))
    step = np.full_like(beta, np.inf)
    for _ in range(NEWTON_STEPS):
        mu = 1 / (1 + np.exp(-np.clip(beta @ design.T + offset, -30, 30)))
        grad = (w * (y - mu)) @ design
        hess = np.einsum("bn,nk,nl->bkl", w * mu * (1 - mu), design, design)
        hess += 1e-10 * np.eye(design.shape[1])
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta += step
        if np.all((np.abs(step).max(axis=1) < 1e-10) | (np.abs(beta).max(axis=1) > 1e3)):
            break  # every fit converged or diverged (separated resample)
    converged = (np.abs(step).max(axis=1) < 1e-6) & (np.abs(beta).max(axis=1) < 1e3)
    beta[~converged] = np.nan
    return beta


def weighted_calibration(y: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every calibration measure for each row of `weights` (resample multiplicities); slope and intercept NaN
    for several classes. Adaptive bins are cut once on the unweighted rows, so resamples share their edges."""
    y, p = check_predictions(y, prob)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_classes = p.shape[1]
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    total = w.sum(axis=1)
    squared = (p[:, 1] - (y == 1)) ** 2 if n_classes == 2 else np.sum((p - np.eye(n_classes)[y]) ** 2, axis=1)
    out = {
        "ece": _binned_ece(bin_index(confidence), correct, confidence, w, ECE_BINS),
        "ece_adaptive": _binned_ece(_adaptive_bins(confidence), correct, confidence, w, ECE_BINS),
        "brier": w @ squared / total,
        "nll": w @ -_log_prob(p[np.arange(len(y)), y]) / total,
    }
    if n_classes == 2 and len(np.unique(y)) == 2:
        x = _log_prob(p[:, 1]) - _log_prob(p[:, 0])
        target = (y == 1).astype(np.float64)
        out["slope"] = _logistic_fit(target, x, w, slope_free=True)[:, 1]
        out["intercept"] = _logistic_fit(target, x, w, slope_free=False)[:, 0]
    else:
        out["slope"] = out["intercept"] = np.full(len(w), np.nan)
    return out


def calibration_metrics(y: np.ndarray, prob: np.ndarray, clusters: np.ndarray | None = None, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """{measure: {"value", "ci", "n_boot"}} with percentile CIs over resampled subjects; NaN where undefined
    (slope/intercept: several classes, or a perfectly separated test set)."""
    y, p = check_predictions(y, prob)
    point = {k: float(v[0]) for k, v in weighted_calibration(y, p, np.ones((1, len(y)))).items()}
    rng = np.random.default_rng(seed)
    chunk = max(1, 500_000 // len(y))
    draws: dict[str, list[np.ndarray]] = {k: [] for k in CALIBRATION_MEASURES}
    for start in range(0, n_boot, chunk):
        weights = resample_weights(len(y), clusters, min(chunk, n_boot - start), rng)
        for name, values in weighted_calibration(y, p, weights).items():
            draws[name].append(values)
    tail = (1 - level) / 2 * 100
    result = {}
    for name in CALIBRATION_MEASURES:
        values = np.concatenate(draws[name]) if draws[name] else np.empty(0)
        values = values[np.isfinite(values)]
        ci = ([float(v) for v in np.percentile(values, [tail, 100 - tail])]
              if len(values) and math.isfinite(point[name]) else [math.nan, math.nan])
        result[name] = {"value": point[name], "ci": ci, "n_boot": len(values)}
    return result


def calibration_report(val_y: np.ndarray, val_prob: np.ndarray, test_y: np.ndarray, test_prob: np.ndarray,
                       test_clusters: np.ndarray, n_boot: int, seed: int,
                       saved: tuple[float, str | None] | None = None) -> tuple[dict, np.ndarray]:
    """metrics.json `calibration` and the calibrated test probabilities. T is fitted on validation alone and
    applied unchanged to test: `saved` is the (T, note) fine-tuning fitted and saved with the model, else T
    is fitted here."""
    temperature, note = saved if saved is not None else fit_temperature(val_y, val_prob)
    calibrated = apply_temperature(test_prob, temperature)
    report = {
        "method": "temperature_scaling", "fitted_on": "val", "temperature": temperature, "note": note,
        "source": "saved with the model" if saved is not None else "fitted at evaluation",
        "n_val": len(val_y),
        "val_nll": {"before": nll(val_y, val_prob), "after": nll(val_y, apply_temperature(val_prob, temperature))},
        "before": calibration_metrics(test_y, test_prob, test_clusters, n_boot, seed),
        "after": calibration_metrics(test_y, calibrated, test_clusters, n_boot, seed),
    }
    return report, calibrated
