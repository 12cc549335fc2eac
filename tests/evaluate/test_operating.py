"""Operating points: thresholds chosen on validation by stated rules, applied unchanged to test."""

import math

import numpy as np
import pytest

from mmhealth.evaluate.operating import choose_thresholds, operating_point, operating_points


def scores(rng, n, shift=1.5):
    y = rng.integers(0, 2, n)
    p1 = 1 / (1 + np.exp(-(shift * (2 * y - 1) + rng.normal(0, 1.2, n))))
    return y, np.column_stack([1 - p1, p1])


def test_thresholds_follow_their_rules():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    score = np.linspace(0.05, 0.95, len(y))
    got = choose_thresholds(y, score)
    # Youden: every threshold, sensitivity + specificity - 1, brute force.
    j = [((score >= t) & (y == 1)).sum() / 11 + ((score < t) & (y == 0)).sum() / 5 - 1 for t in score]
    assert got["youden"] == pytest.approx(score[int(np.argmax(j))])
    # Sensitivity 0.9 of 11 positives: at most one missed; the highest such threshold lets exactly one pass.
    called = score >= got["sensitivity_0.9"]
    assert (called & (y == 1)).sum() / 11 >= 0.9
    higher = score[score > got["sensitivity_0.9"]].min()
    assert ((score >= higher) & (y == 1)).sum() / 11 < 0.9
    assert all(math.isnan(v) for v in choose_thresholds(np.ones(4), score[:4]).values())


def test_confusion_matrix_and_rates_at_a_threshold():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    score = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.6])
    got = operating_point(y, score, 0.5, None, n_boot=200, seed=0)
    assert got["confusion"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
    assert got["sensitivity"]["value"] == pytest.approx(0.75) and got["specificity"]["value"] == pytest.approx(0.75)
    assert got["ppv"]["value"] == pytest.approx(0.75) and got["npv"]["value"] == pytest.approx(0.75)
    lo, hi = got["sensitivity"]["ci"]
    assert lo <= 0.75 <= hi


def test_thresholds_chosen_on_validation_are_applied_unchanged_to_test():
    rng = np.random.default_rng(0)
    val_y, val_prob = scores(rng, 400)
    test_y, test_prob = scores(rng, 200)
    got = operating_points(val_y, val_prob, test_y, test_prob, np.arange(200), n_boot=100, seed=0)
    expected = choose_thresholds(val_y, val_prob[:, 1])
    for rule in ("youden", "sensitivity_0.9"):
        assert got[rule]["threshold"] == expected[rule] and got[rule]["chosen_on"] == "val"
        called = test_prob[:, 1] >= expected[rule]
        assert got[rule]["confusion"]["tp"] == int((called & (test_y == 1)).sum())
    assert got["sensitivity_0.9"]["val"]["sensitivity"] >= 0.9
    # Another test set: the same thresholds (test never reaches the choice).
    other_y, other_prob = scores(rng, 200, shift=0.3)
    again = operating_points(val_y, val_prob, other_y, other_prob, np.arange(200), n_boot=100, seed=0)
    assert [again[r]["threshold"] for r in again] == [got[r]["threshold"] for r in got]
    assert operating_points(val_y, np.column_stack([val_prob, val_prob[:, :1]]) / 1.5,
                            test_y, np.column_stack([test_prob, test_prob[:, :1]]) / 1.5,
                            np.arange(200), 10, 0) == {}
