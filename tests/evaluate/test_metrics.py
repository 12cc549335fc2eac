"""Metric values against hand computation, bootstrap CIs, cluster resampling and degenerate inputs."""

import json
import math
import time

import numpy as np
import pytest

from mmhealth.evaluate.metrics import (
    METRICS,
    bootstrap_metrics,
    calibration_curve,
    expected_calibration_error,
    json_safe,
    point_metrics,
    resample_weights,
    weighted_metrics,
)


def binary(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.column_stack([1 - p1, p1])


def test_binary_point_metrics_match_hand_computation():
    y = np.array([0, 0, 1, 1])
    prob = binary([0.1, 0.6, 0.4, 0.8])
    got = point_metrics(y, prob)
    # Pairs (pos, neg): 0.4>0.1, 0.4<0.6, 0.8>0.1, 0.8>0.6 -> 3 of 4.
    assert got["auroc"] == pytest.approx(0.75)
    # Ranked 0.8(+) 0.6(-) 0.4(+) 0.1(-): precision at positives 1 and 2/3 -> AP = (1 + 2/3) / 2.
    assert got["auprc"] == pytest.approx(5 / 6)
    # Predicted 0, 1, 0, 1: two correct.
    assert got["accuracy"] == pytest.approx(0.5)
    assert got["macro_f1"] == pytest.approx(0.5)
    assert got["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.04) / 4)
    # Confidences 0.9 (ok), 0.6 (wrong), 0.6 (wrong), 0.8 (ok) in bins (.8,.9], (.5,.6], (.5,.6], (.7,.8].
    assert got["ece"] == pytest.approx((0.1 + 1.2 + 0.2) / 4)


def test_multiclass_point_metrics_are_macro_one_vs_rest():
    y = np.array([0, 1, 2, 2])
    prob = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.1, 0.4]])
    got = point_metrics(y, prob)
    # One-vs-rest AUROCs: class 0: 0.7 vs (0.2, 0.1, 0.5) -> 1; class 1: 0.5 vs (0.2, 0.3, 0.1) -> 1;
    # class 2: (0.6, 0.4) vs (0.1, 0.3) -> 1.
    assert got["auroc"] == pytest.approx(1.0)
    assert got["accuracy"] == pytest.approx(0.75)
    # F1: class 0 (tp 1, pred 2, true 1) 2/3; class 1: 1; class 2 (tp 1, pred 1, true 2) 2/3.
    assert got["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    sq = [0.09 + 0.04 + 0.01, 0.04 + 0.25 + 0.09, 0.01 + 0.09 + 0.16, 0.25 + 0.01 + 0.36]
    assert got["brier"] == pytest.approx(np.mean(sq))


def test_single_class_input_leaves_ranking_metrics_undefined():
    y = np.zeros(5, dtype=int)
    prob = binary([0.1, 0.2, 0.7, 0.3, 0.4])
    got = point_metrics(y, prob)
    assert math.isnan(got["auroc"]) and math.isnan(got["auprc"])
    assert got["accuracy"] == pytest.approx(0.8)
    boot = bootstrap_metrics(y, prob, n_boot=50)
    assert math.isnan(boot["auroc"]["value"]) and all(math.isnan(v) for v in boot["auroc"]["ci"])
    assert boot["auroc"]["n_boot"] == 0 and boot["accuracy"]["n_boot"] == 50
    text = json.dumps(json_safe(boot), allow_nan=False)
    assert json.loads(text)["auroc"] == {"value": None, "ci": [None, None], "n_boot": 0}


def test_weighted_metrics_equal_scikit_learn_on_resamples_with_ties():
    rng = np.random.default_rng(3)
    for n_classes in (2, 3):
        y = rng.integers(0, n_classes, 60)
        prob = rng.dirichlet(np.ones(n_classes), 60).round(1)  # rounding makes many tied scores
        prob /= prob.sum(axis=1, keepdims=True)
        draws = rng.integers(0, 60, size=(20, 60))
        weights = np.stack([np.bincount(d, minlength=60) for d in draws]).astype(float)
        got = weighted_metrics(y, prob, weights)
        for b, d in enumerate(draws):
            want = point_metrics(y[d], prob[d])
            for name in METRICS:
                if len(np.unique(y[d])) < len(np.unique(y)) and name in ("auroc", "auprc"):
                    assert math.isnan(got[name][b])
                else:
                    assert got[name][b] == pytest.approx(want[name]), (n_classes, name)


def test_ci_contains_estimate_and_narrows_with_more_rows():
    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.integers(0, 2, n)
        p1 = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, n), 0.01, 0.99)
        return y, binary(p1)

    small = bootstrap_metrics(*sample(60), n_boot=300, seed=1)
    large = bootstrap_metrics(*sample(2000), n_boot=300, seed=1)
    for name in METRICS:
        for result in (small, large):
            lo, hi = result[name]["ci"]
            assert lo <= result[name]["value"] <= hi, name
            assert isinstance(result[name]["value"], float) and isinstance(lo, float)
        assert np.diff(large[name]["ci"])[0] < np.diff(small[name]["ci"])[0], name


def test_cluster_bootstrap_keeps_subjects_together_and_widens_ci():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(20), 10)
    weights = resample_weights(len(clusters), clusters, 200, rng)
    for w in weights:
        # Every row of one subject is drawn equally often, and 20 subjects are drawn in all.
        per_subject = w.reshape(20, 10)
        assert (per_subject == per_subject[:, :1]).all()
        assert per_subject[:, 0].sum() == 20
    # Rows of one subject share their label: resampling rows overstates the information.
    y = np.repeat(rng.integers(0, 2, 20), 10)
    prob = binary(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.3, 200), 0.01, 0.99))
    by_row = bootstrap_metrics(y, prob, n_boot=400, seed=2)
    by_subject = bootstrap_metrics(y, prob, clusters=clusters, n_boot=400, seed=2)
    assert by_subject["accuracy"]["value"] == by_row["accuracy"]["value"]
    assert np.diff(by_subject["accuracy"]["ci"])[0] > np.diff(by_row["accuracy"]["ci"])[0]


def test_single_class_resamples_are_skipped_and_counted():
    y = np.array([1] + [0] * 9)
    prob = binary(np.linspace(0.05, 0.95, 10)[::-1])
    result = bootstrap_metrics(y, prob, n_boot=500, seed=0)
    # P(no positive among 10 draws) = 0.9^10 ~ 0.35.
    assert 250 < result["auroc"]["n_boot"] < 400
    assert result["accuracy"]["n_boot"] == 500


def test_bootstrap_is_fast_enough_and_reproducible():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    prob = binary(rng.random(200))
    start = time.perf_counter()
    first = bootstrap_metrics(y, prob, clusters=np.arange(200) // 2, n_boot=1000, seed=7)
    assert time.perf_counter() - start < 2.0
    assert first == bootstrap_metrics(y, prob, clusters=np.arange(200) // 2, n_boot=1000, seed=7)


def test_calibration_helpers():
    y = np.array([0, 1, 1, 1])
    prob = binary([0.05, 0.95, 0.95, 0.45])
    curve = calibration_curve(y, prob)
    assert curve["predicted"] == pytest.approx([0.05, 0.45, 0.95])
    assert curve["observed"] == pytest.approx([0.0, 1.0, 1.0])
    assert curve["count"] == [1, 1, 2]
    # Max-probability bins: 0.95 x3 (all correct), 0.55 (wrong).
    assert expected_calibration_error(y, prob) == pytest.approx((3 * 0.05 + 0.55) / 4)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="class indices"):
        point_metrics(np.array([0, 2]), binary([0.1, 0.2]))
    with pytest.raises(ValueError, match="shape"):
        point_metrics(np.array([0, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        point_metrics(np.array([0, 1]), binary([np.nan, 0.2]))


def test_bootstrap_result_is_strict_json():
    y = np.arange(40) % 2
    prob = np.array([[0.7, 0.3], [0.2, 0.8]] * 20)
    result = bootstrap_metrics(y, prob, clusters=np.arange(40) // 2, n_boot=100, seed=0)
    parsed = json.loads(json.dumps(json_safe(result), allow_nan=False))
    assert parsed["auroc"]["value"] == 1.0 and parsed["accuracy"]["ci"] == [1.0, 1.0]
