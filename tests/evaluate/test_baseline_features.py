"""The baseline's feature builders on tiny inputs whose values are computed by hand."""

import itertools

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmhealth.evaluate.baseline_bags import row_unit_pairs, train_columns, unit_sum
from mmhealth.evaluate.baseline_select import (
    GRIDS,
    HGB,
    LR,
    Choice,
    Variant,
    choose,
    cv_folds,
    describe,
    fit_predict,
    grid_cv_log_loss,
    make_model,
    stacked,
)
from mmhealth.evaluate.dna_baseline import kmer_counts, row_bases
from mmhealth.evaluate.ehr_baseline import select_codes, subject_features
from mmhealth.evaluate.image_baseline import (
    MAX_SLICES_PER_BAG,
    PERCENTILES,
    SLICE_FEATURES,
    bag_slices,
    slice_features,
    sorted_percentiles,
    to_hu,
)
from mmhealth.evaluate.text_baseline import decode_rows, word_counts
from mmhealth.tokenize.dna import kmer_ids_batch
from mmhealth.tokenize.text import TextParams, train_wordpiece

A, C, G, T = 0, 1, 2, 3


def test_bags_follow_the_model_record_for_image_and_dna_subject_otherwise():
    table = pa.table({"subject_id": pa.array([1, 1, 2], pa.int64()), "record_id": pa.array(["a", "b", "c"])})
    units = [(1, None), (1, "b"), (1, "missing"), (3, None)]
    pairs = sorted(zip(*row_unit_pairs(table, units, "dna"), strict=True))
    assert pairs == [(0, 0), (1, 0), (1, 1)]  # a missing record has no rows; subject 3 has none
    pairs = sorted(zip(*row_unit_pairs(table, units, "text"), strict=True))
    assert pairs == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # notes: always the subject's rows
    counts = unit_sum(np.array([[1.0, 0], [2.0, 5.0], [7.0, 7.0]]), *row_unit_pairs(table, units, "dna"), 4)
    assert counts.toarray().tolist() == [[3, 5], [2, 5], [0, 0], [0, 0]]
    train, test = train_columns(counts, counts[:1])
    assert train.shape == (4, 2) and test.shape == (1, 2)


def test_dna_bases_come_back_from_overlapping_and_strided_kmers():
    for stride in (1, 3):
        ids = kmer_ids_batch(["ACGTAC", "GGN"], k=3, stride=stride, max_length=16)
        bases, offsets = row_bases(ids.values.to_numpy(), ids.offsets.to_numpy(), 3, stride)
        assert bases[offsets[0]:offsets[1]].tolist() == [A, C, G, T, A, C]
        assert bases[offsets[1]:offsets[2]].tolist() == [-1, -1, -1]  # an [UNK] 3-mer: its bases are unknown


def test_kmer_counts_stay_inside_a_row_and_skip_unknown_bases():
    bases = np.array([A, C, G, T, A, C, -1, G, T, T], np.int8)
    counts = kmer_counts(bases, np.array([0, 6, 10]), 2).toarray()
    expected = np.zeros((2, 16))
    expected[0, [4 * A + C, 4 * C + G, 4 * G + T, 4 * T + A]] = [2, 1, 1, 1]  # AC twice; no C|? across rows
    expected[1, [4 * G + T, 4 * T + T]] = [1, 1]  # -1G skipped
    assert (counts == expected).all()


def test_text_rows_decode_to_words_and_count_word_bigrams():
    params = TextParams(vocab_size=100, min_frequency=1, max_length=32, stride=4, lowercase=True, tokenizer_path=None)
    tokenizer = train_wordpiece(["Chest pain today", "no chest pain"], params)
    rows = [[2, *tokenizer.encode("chest pain chest", add_special_tokens=False).ids, 3], [2, 3]]
    texts = decode_rows(np.concatenate(rows), np.array([0, len(rows[0]), len(rows[0]) + 2]), tokenizer)
    assert texts == ["chest pain chest", ""]
    counts = word_counts(texts)
    reference = word_counts(["chest", "chest pain", "pain chest"])  # one n-gram each, besides unigrams
    chest = reference[0].indices[0]
    assert counts[0, chest] == 2
    bigrams = set(reference[1].indices) - set(reference[0].indices) - set(word_counts(["pain"]).indices)
    assert [counts[0, j] for j in bigrams] == [1]
    assert counts[1].nnz == 0


def test_ehr_features_per_code_count_last_mean_missing_and_age():
    t = pd.Timestamp
    events = pd.DataFrame({
        "subject_id": [1, 1, 1, 1, 1, 2, 2],
        "time": [t("2000-01-01"), pd.NaT, t("2040-01-01"), t("2040-06-01"), t("2041-01-01"), pd.NaT, t("2030-01-01")],
        "code": ["MEDS_BIRTH", "SEX//F", "LAB//X", "LAB//X", "DX//A", "SEX//M", "DX//A"],
        "value": [np.nan, np.nan, 2.0, 6.0, np.nan, np.nan, np.nan]})
    codes, valued = select_codes(events)
    assert codes == ["SEX//F", "SEX//M", "DX//A", "LAB//X"] and valued == ["LAB//X"]
    frame = subject_features(events, [2, 1, 9], codes, valued)
    assert frame.loc[1, "count:LAB//X"] == 2 and frame.loc[1, "last:LAB//X"] == 6.0
    assert frame.loc[1, "mean:LAB//X"] == 4.0 and frame.loc[1, "missing:LAB//X"] == 0.0
    assert frame.loc[1, "age"] == pytest.approx((t("2041-01-01") - t("2000-01-01")).days / 365.25)
    assert frame.loc[2, "count:SEX//M"] == 1 and np.isnan(frame.loc[2, "last:LAB//X"])
    assert frame.loc[2, "missing:LAB//X"] == 1.0 and frame.loc[2, "age_missing"] == 1.0
    assert frame.loc[9].filter(like="count:").sum() == 0 and frame.index.tolist() == [2, 1, 9]


def test_image_slice_features_in_hounsfield_units():
    assert to_hu(np.array([-1.0, 0.0, 1.0]), -160, 240).tolist() == [-160, 40, 240]
    hu = np.array([[[-160.0, 0.0], [40.0, 240.0]]])
    got = dict(zip(SLICE_FEATURES, slice_features(hu, -160, 240)[0], strict=True))
    # 16 bins of 25 HU: -160 in bin 0, 0 in bin 6 ([-10, 15)), 40 in bin 8 ([40, 65)), 240 in the last bin
    assert [got[f"hu_bin{i}"] for i in (0, 6, 8, 15)] == [0.25] * 4
    assert got["at_window_low"] == 0.25 and got["at_window_high"] == 0.25
    assert got["mean"] == 30.0 and got["std"] == pytest.approx(np.std([-160, 0, 40, 240]))
    assert got["p50"] == 20.0
    # np.gradient on 2x2: d/dx = (0+160, 240-40) rows, d/dy = (40+160, 240-0) columns
    magnitudes = [np.hypot(160, 200), np.hypot(160, 240), np.hypot(200, 200), np.hypot(200, 240)]
    assert got["gradient_mean"] == pytest.approx(np.mean(magnitudes))
    # reflect mode: every 3x3 neighbourhood of a 2x2 image holds each value in a 2x2 block pattern
    assert got["local_variance_mean"] > 0


def test_description_is_one_sentence_naming_features_model_and_selection():
    variant = Variant("text", "w", "TF-IDF word 1-2-grams", {}, np.zeros((1, 1)), np.zeros((1, 1)), lambda: None, False)
    choice = Choice([variant], LR, {"C": 4.0}, 5, 0.3, tried=["a"] * 10, families=[LR])
    assert describe(choice) == ("TF-IDF word 1-2-grams + logistic regression (C=4), chosen by 5-fold CV on train "
                                "among 10 settings")


def test_sparse_and_dense_blocks_fuse_with_missing_values():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    counts = sp.csr_matrix(rng.poisson(1.0, (40, 8)) + np.outer(y, [3, 0, 0, 0, 0, 0, 0, 0]))
    values = np.column_stack([rng.normal(y, 0.3), np.where(rng.random(40) < 0.3, np.nan, 1.0)])
    sparse = Variant("dna", "k", "k-mers", {}, counts, counts[:4], TfidfTransformer, False)
    dense = Variant("ehr", "e", "codes", {}, values, values[:4], lambda: make_pipeline(SimpleImputer(), StandardScaler()),
                    True)
    choice = choose([[sparse, dense]], y, seed=0, boosting=False)
    prob = fit_predict(choice, y, 2, seed=0)
    assert choice.cv_folds == 3 and len(choice.tried) == 5 and prob.shape == (4, 2)  # 3 folds under 500 rows
    assert (prob.argmax(1) == y[:4]).all()


def test_percentiles_from_sorted_rows_match_numpy():
    rng = np.random.default_rng(0)
    for shape in [(3, 4096), (2, 7), (2, 1)]:
        x = rng.normal(size=shape).astype(np.float32)
        got = sorted_percentiles(np.sort(x, axis=1), PERCENTILES)
        assert got == pytest.approx(np.percentile(x, PERCENTILES, axis=1).T, abs=1e-6)
    assert sorted_percentiles(np.array([[0.0, 10.0, 20.0, 30.0, 40.0]]), (25, 50, 90)).tolist() == [[10.0, 20.0, 36.0]]


def test_image_bags_use_at_most_64_evenly_spaced_slices_and_count_them_all():
    # unit 0 has 3 rows, unit 1 has 200 (given out of order): 64 of them from the first to the last, in order
    rows = np.r_[[5, 3, 4], np.arange(300, 100, -1)]
    owner = np.r_[[0, 0, 0], np.ones(200, np.int64)]
    present, picked, sizes = bag_slices(rows, owner)
    assert present.tolist() == [0, 1] and sizes.tolist() == [3, 200]
    assert picked[0].tolist() == [3, 4, 5]
    assert len(picked[1]) == MAX_SLICES_PER_BAG and picked[1][0] == 101 and picked[1][-1] == 300
    assert (np.diff(picked[1]) > 0).all() and set(np.diff(picked[1])) <= {3, 4}


def test_cv_uses_3_folds_under_500_rows_and_5_from_there():
    assert cv_folds(np.repeat([0, 1], 100)) == 3 and cv_folds(np.repeat([0, 1], 250)) == 5
    assert cv_folds(np.r_[np.zeros(600, np.int64), [1, 1]]) == 2 and cv_folds(np.r_[np.zeros(9, np.int64), [1]]) == 0


def test_shared_fold_transforms_score_as_grid_search_and_are_fitted_once_per_fold():
    # The per-fold transform outputs are computed once per variant and shared by every setting, both model
    # families and a later fused candidate; the scores are GridSearchCV's on the whole pipeline.
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    counts = sp.csr_matrix(rng.poisson(1.0, (60, 12)) + np.outer(y, [2] + [0] * 11))
    values = np.column_stack([rng.normal(y, 1.0), np.where(rng.random(60) < 0.3, np.nan, rng.normal(size=60))])
    fitted = []

    class CountingScaler(StandardScaler):
        def fit(self, X, y=None, sample_weight=None):
            fitted.append(1)
            return super().fit(X, y, sample_weight)

    def counting_scaler():
        return make_pipeline(SimpleImputer(), CountingScaler())

    sparse = Variant("dna", "k", "k-mers", {}, counts, counts[:4], TfidfTransformer, False)
    dense = Variant("ehr", "e", "codes", {}, values, values[:4], counting_scaler, True)
    splits = list(StratifiedKFold(3, shuffle=True, random_state=0).split(values, y))
    cache = {}
    for candidate in ([dense], [sparse, dense]):
        for family in (LR, HGB):
            grid = [dict(zip(GRIDS[family], values_, strict=True))
                    for values_ in itertools.product(*GRIDS[family].values())]
            ours = grid_cv_log_loss(candidate, family, grid, y, splits, seed=0, cache=cache)
            search = GridSearchCV(make_model(candidate, family, 0), GRIDS[family], scoring="neg_log_loss",
                                  cv=splits, refit=False).fit(stacked(candidate, "train"), y)
            assert ours == pytest.approx(-search.cv_results_["mean_test_score"], rel=1e-9)
    # GridSearchCV fitted the dense variant's transform per setting and fold; ours once per fold (3 of them)
    n_settings = len(GRIDS[LR]["model__C"]) + len(GRIDS[HGB]["model__max_depth"])
    assert len(fitted) == 3 + 2 * n_settings * 3
    assert set(np.concatenate([val for _, val in splits]).tolist()) == set(range(60))
