"""Paired AUROC comparison: DeLong against its textbook formula, against the paired bootstrap, and the
bootstrap CI's coverage of a known difference over seeded repeated simulations."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from mmhealth.evaluate.compare import compare_auroc, delong_difference, paired_bootstrap_difference
from mmhealth.evaluate.metrics import json_safe, point_metrics, resample_weights, weighted_auroc


def binary(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.column_stack([1 - p1, p1])


def simulate(rng, n, shift_a=1.5, shift_b=0.8, rho=0.5):
    """Binormal scores of two correlated models; true AUROCs are Phi(shift / sqrt(2))."""
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    noise_a = rho ** 0.5 * shared + (1 - rho) ** 0.5 * rng.normal(size=n)
    noise_b = rho ** 0.5 * shared + (1 - rho) ** 0.5 * rng.normal(size=n)
    score_a, score_b = shift_a * y + noise_a, shift_b * y + noise_b
    squash = lambda s: 1 / (1 + np.exp(-s))  # noqa: E731 - a monotone map keeps the AUROC
    return y, binary(squash(score_a)), binary(squash(score_b))


TRUE_DIFFERENCE = norm.cdf(1.5 / 2 ** 0.5) - norm.cdf(0.8 / 2 ** 0.5)


def textbook_delong(y, a, b):
    """DeLong, DeLong & Clarke-Pearson (1988), written out pair by pair."""
    def components(score):
        pos, neg = score[y == 1], score[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()
    v10a, v01a, auc_a = components(a)
    v10b, v01b, auc_b = components(b)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / len(v10a) + s01 / len(v01a)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return auc_a - auc_b, math.sqrt(var)


def test_delong_equals_the_textbook_formula_with_one_unit_per_subject():
    y, a, b = simulate(np.random.default_rng(0), 150)
    a[:10, 1] = 0.5  # ties
    a[:10, 0] = 0.5
    difference, se = textbook_delong(y, a[:, 1], b[:, 1])
    got = delong_difference(y, a, b, clusters=np.arange(150))
    assert got["difference"] == pytest.approx(difference, abs=1e-12)
    assert got["se"] == pytest.approx(se, rel=1e-9)
    assert got["p_value"] == pytest.approx(2 * norm.sf(abs(difference) / se), rel=1e-9)
    assert delong_difference(y, a, b)["se"] == pytest.approx(se, rel=1e-9)  # no clusters: units


def test_bootstrap_and_delong_agree_on_a_known_difference():
    y, a, b = simulate(np.random.default_rng(1), 600)
    test = delong_difference(y, a, b)
    boot = paired_bootstrap_difference(y, a, b, n_boot=2000, seed=0)
    assert test["difference"] == pytest.approx(point_metrics(y, a)["auroc"] - point_metrics(y, b)["auroc"])
    assert abs(test["difference"] - TRUE_DIFFERENCE) < 3 * test["se"]
    delong_ci = [test["difference"] - 1.96 * test["se"], test["difference"] + 1.96 * test["se"]]
    assert boot["ci"] == pytest.approx(delong_ci, abs=0.015)
    assert test["p_value"] < 0.01 and boot["ci"][0] > 0  # both see the real difference


def test_bootstrap_ci_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(2024)
    covered_boot = covered_delong = 0
    repeats = 200
    for k in range(repeats):
        y, a, b = simulate(rng, 300)
        lo, hi = paired_bootstrap_difference(y, a, b, n_boot=300, seed=k)["ci"]
        covered_boot += lo <= TRUE_DIFFERENCE <= hi
        test = delong_difference(y, a, b)
        covered_delong += abs(test["difference"] - TRUE_DIFFERENCE) <= 1.96 * test["se"]
    # 95% nominal; with 200 repeats the binomial SD is ~1.5 points.
    assert 0.90 <= covered_boot / repeats <= 0.99
    assert 0.90 <= covered_delong / repeats <= 0.99


def test_clusters_widen_the_interval_when_subjects_repeat():
    y, a, b = simulate(np.random.default_rng(3), 100)
    twice = lambda x: np.concatenate([x, x])  # noqa: E731
    subjects = twice(np.arange(100))
    naive = delong_difference(twice(y), twice(a), twice(b))
    clustered = delong_difference(twice(y), twice(a), twice(b), clusters=subjects)
    single = delong_difference(y, a, b)
    assert clustered["difference"] == pytest.approx(single["difference"])
    assert clustered["se"] > naive["se"] * 1.3  # duplicated units are not new evidence
    assert clustered["se"] == pytest.approx(single["se"], rel=0.02)
    # The subject bootstrap sees the same spread as the clustered DeLong variance.
    weights = resample_weights(200, subjects, 2000, np.random.default_rng(0))
    spread = np.std(weighted_auroc(twice(y), twice(a), weights) - weighted_auroc(twice(y), twice(b), weights))
    assert spread == pytest.approx(clustered["se"], rel=0.1)


def test_identical_and_multiclass_inputs():
    y, a, _ = simulate(np.random.default_rng(4), 80)
    same = delong_difference(y, a, a)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    rng = np.random.default_rng(5)
    y3 = rng.integers(0, 3, 200)
    logits_a, logits_b = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    logits_a[np.arange(200), y3] += 1.5
    softmax = lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # noqa: E731
    got = delong_difference(y3, softmax(logits_a), softmax(logits_b), clusters=np.arange(200) // 2)
    expected = point_metrics(y3, softmax(logits_a))["auroc"] - point_metrics(y3, softmax(logits_b))["auroc"]
    assert got["difference"] == pytest.approx(expected)
    assert 0 < got["se"] < 0.2 and got["p_value"] < 0.01


def frame(subjects, records, labels, prob):
    return pd.DataFrame({"subject_id": subjects, "record_id": records, "label": labels,
                         "probabilities": [row.tolist() for row in prob]})


def test_compare_auroc_pairs_units_and_writes_the_contract_shape():
    y, a, b = simulate(np.random.default_rng(6), 120)
    subjects, records = np.arange(120) // 2, [f"series-{k}" for k in range(120)]  # two records per subject
    labels = np.array(["no", "yes"])[y]
    model = frame(subjects, records, labels, a)
    # The baseline lists units in another order and has one more (a unit the model could not predict).
    other = pd.concat([frame(subjects, records, labels, b).iloc[::-1], frame([999], [None], ["no"], binary([0.3]))],
                      ignore_index=True)
    got = compare_auroc(model, other, ["no", "yes"], n_boot=200, seed=0)
    assert set(got) >= {"metric", "difference", "p_value", "test"}
    assert got["metric"] == "auroc" and got["test"] == "delong"
    assert got["n_units"] == 120 and got["n_subjects"] == 60
    assert got["difference"]["value"] == pytest.approx(point_metrics(y, a)["auroc"] - point_metrics(y, b)["auroc"])
    assert got["difference"]["value"] == pytest.approx(delong_difference(y, a, b, subjects)["difference"])
    assert got["p_value"] == pytest.approx(delong_difference(y, a, b, subjects)["p_value"])
    json.dumps(json_safe(got), allow_nan=False)

    relabelled = other.assign(label=np.where(other["label"] == "no", "yes", "no"))
    with pytest.raises(ValueError, match="different labels"):
        compare_auroc(model, relabelled, ["no", "yes"], n_boot=10, seed=0)


def test_tables_without_a_shared_unit_give_an_undefined_comparison_not_an_error():
    y, a, b = simulate(np.random.default_rng(7), 20)
    model = frame(np.arange(20), [None] * 20, np.array(["no", "yes"])[y], a)
    other = frame(np.arange(20) + 100, [None] * 20, np.array(["no", "yes"])[y], b)
    got = json_safe(compare_auroc(model, other, ["no", "yes"], n_boot=10, seed=0))
    assert got["difference"]["value"] is None and got["p_value"] is None and got["n_units"] == 0
