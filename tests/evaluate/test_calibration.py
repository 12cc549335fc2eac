"""Temperature scaling on validation, calibration measures against direct computation, and that what is
fitted on validation reaches test unchanged."""

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mmhealth.evaluate.calibration import (
    apply_temperature,
    calibration_metrics,
    calibration_report,
    fit_temperature,
    nll,
    weighted_calibration,
)
from mmhealth.evaluate.metrics import expected_calibration_error, point_metrics


def overconfident(rng, n, scale=3.0, n_classes=2):
    """Labels drawn from softmax(z) while the model reports softmax(scale * z): over-confident by `scale`."""
    z = rng.normal(0, 1, (n, n_classes))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(n_classes, p=row) for row in true])
    shown = np.exp(scale * z) / np.exp(scale * z).sum(axis=1, keepdims=True)
    return y, shown


def test_temperature_scaling_lowers_validation_nll_and_finds_the_true_temperature():
    rng = np.random.default_rng(0)
    y, prob = overconfident(rng, 4000)
    temperature, note = fit_temperature(y, prob)
    assert note is None
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert nll(y, apply_temperature(prob, temperature)) < nll(y, prob) - 0.05
    y3, prob3 = overconfident(rng, 3000, scale=0.5, n_classes=3)  # under-confident: T < 1
    t3, _ = fit_temperature(y3, prob3)
    assert t3 == pytest.approx(0.5, rel=0.15) and nll(y3, apply_temperature(prob3, t3)) < nll(y3, prob3)


def test_temperature_keeps_classes_and_ranking():
    rng = np.random.default_rng(1)
    y, prob = overconfident(rng, 500)
    scaled = apply_temperature(prob, 2.5)
    assert np.allclose(scaled.sum(axis=1), 1)
    assert (scaled.argmax(axis=1) == prob.argmax(axis=1)).all()
    assert point_metrics(y, scaled)["auroc"] == pytest.approx(point_metrics(y, prob)["auroc"])
    assert np.allclose(apply_temperature(prob, 1.0), prob, atol=1e-9)
    assert fit_temperature(np.zeros(10, dtype=int), prob[:10])[0] == 1.0  # one class: nothing to fit
    # Perfectly separated validation: the log loss falls without end as T -> 0; T stays 1 and says why.
    separated = np.column_stack([1 - np.r_[np.full(20, 0.3), np.full(20, 0.7)], np.r_[np.full(20, 0.3), np.full(20, 0.7)]])
    temperature, note = fit_temperature(np.r_[np.zeros(20, int), np.ones(20, int)], separated)
    assert temperature == 1.0 and "every validation unit" in note


def test_calibration_measures_match_direct_computation():
    rng = np.random.default_rng(2)
    y, prob = overconfident(rng, 800, scale=2.0)
    got = {k: float(v[0]) for k, v in weighted_calibration(y, prob, np.ones((1, len(y)))).items()}
    assert got["ece"] == pytest.approx(expected_calibration_error(y, prob))
    assert got["brier"] == pytest.approx(point_metrics(y, prob)["brier"])
    assert got["nll"] == pytest.approx(nll(y, prob))
    x = np.log(prob[:, 1] / prob[:, 0])
    fit = LogisticRegression(C=np.inf).fit(x[:, None], y)
    assert got["slope"] == pytest.approx(fit.coef_[0, 0], rel=1e-4)
    assert got["slope"] == pytest.approx(0.5, abs=0.1)  # over-confident by 2: slope ~ 1/2
    # Calibration-in-the-large: log-odds offset with slope 1; its score equation sets mean(p') = mean(y).
    shifted = 1 / (1 + np.exp(-(x + got["intercept"])))
    assert shifted.mean() == pytest.approx(y.mean(), abs=1e-6)
    # Adaptive bins hold equal numbers of rows: ECE over deciles of confidence.
    confidence, correct = prob.max(axis=1), (prob.argmax(axis=1) == y)
    order = np.argsort(confidence, kind="stable")
    expected = sum(abs(correct[idx].sum() - confidence[idx].sum()) for idx in np.array_split(order, 10)) / len(y)
    assert got["ece_adaptive"] == pytest.approx(expected)


def test_separated_test_set_leaves_slope_undefined_not_infinite():
    y = np.array([0] * 20 + [1] * 20)
    prob = np.column_stack([1 - np.r_[np.full(20, 0.2), np.full(20, 0.8)], np.r_[np.full(20, 0.2), np.full(20, 0.8)]])
    result = calibration_metrics(y, prob, n_boot=50)
    assert math.isnan(result["slope"]["value"]) and math.isfinite(result["brier"]["value"])


def test_temperature_fitted_on_validation_is_applied_unchanged_to_test():
    rng = np.random.default_rng(3)
    val_y, val_prob = overconfident(rng, 1500)
    test_y, test_prob = overconfident(rng, 300)
    report, calibrated = calibration_report(val_y, val_prob, test_y, test_prob, np.arange(300), n_boot=100, seed=0)
    assert report["temperature"] == fit_temperature(val_y, val_prob)[0] and report["note"] is None
    assert np.allclose(calibrated, apply_temperature(test_prob, report["temperature"]))
    # A different test set gets the same T: nothing about test reaches the fit.
    other_y, other_prob = overconfident(rng, 300, scale=1.0)
    again, _ = calibration_report(val_y, val_prob, other_y, other_prob, np.arange(300), n_boot=100, seed=0)
    assert again["temperature"] == report["temperature"]
    assert report["val_nll"]["after"] < report["val_nll"]["before"]
    assert report["after"]["ece"]["value"] < report["before"]["ece"]["value"]
    lo, hi = report["after"]["slope"]["ci"]
    assert lo <= 1.0 <= hi  # after scaling the slope is compatible with 1
