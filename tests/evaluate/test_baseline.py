"""The logistic-regression baseline: features by hand, learning a planted signal, fitted on train only."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mmhealth.core.parquet_io import write_table
from mmhealth.evaluate.baseline import (
    bag_features,
    baseline_name,
    fit_and_predict,
    intensity_edges,
    run_baseline,
    tokenizer_vocab_size,
)
from mmhealth.evaluate.metrics import point_metrics

SHARDS = 2


def token_table(rows):
    """rows: (subject_id, record_id, input_ids)."""
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "record_id": pa.array([r[1] for r in rows], pa.string()),
                     "input_ids": pa.array([r[2] for r in rows], pa.list_(pa.int32()))})


def image_table(rows):
    """rows: (subject_id, record_id, pixel_values)."""
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "record_id": pa.array([r[1] for r in rows], pa.string()),
                     "pixel_values": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
                     "channels": pa.array([1] * len(rows), pa.int32()),
                     "height": pa.array([2] * len(rows), pa.int32()),
                     "width": pa.array([len(r[2]) // 2 for r in rows], pa.int32())})


def shard_map(root, modalities, splits=("train", "test")):
    """split -> modality -> the shard files write_shards wrote, as a job is handed them."""
    return {s: {m: [root / m / s / f"shard-{k}.parquet" for k in range(SHARDS)] for m in modalities} for s in splits}


def tokenizer_map(root, modalities):
    return {m: root / m / "tokenizer" for m in modalities}


def write_shards(root, modality, split, table):
    shard = pa.array(np.asarray(table.column("subject_id")) % SHARDS)
    for k in range(SHARDS):
        part = table.filter(pc.equal(shard, k))
        write_table(part, root / modality / split / f"shard-{k}.parquet", "tokenize")


def test_baseline_name_says_which_features():
    assert baseline_name(["text"]) == "logistic_regression_token_histogram"
    assert baseline_name(["image"]) == "logistic_regression_intensity_histogram"
    assert baseline_name(["dna", "image"]) == "logistic_regression_token_histogram_and_intensity_histogram"
    with pytest.raises(ValueError, match="subset"):
        baseline_name(["audio"])


def test_token_bag_is_mean_of_row_histograms():
    table = token_table([(1, "a", [1, 2, 2]), (1, "b", [1, 3]), (2, "c", [4, 4, 4, 4])])
    units = [(1, None), (1, "b"), (1, "missing"), (3, None)]
    subject_1 = [0, (1 / 3 + 1 / 2) / 2, (2 / 3) / 2, (1 / 2) / 2, 0, np.log1p(2)]
    record_b = [0, 0.5, 0, 0.5, 0, np.log1p(1)]
    got = bag_features(table, "dna", units, vocab_size=5)
    assert got[0] == pytest.approx(subject_1)
    assert got[1] == pytest.approx(record_b)
    assert got[2] == pytest.approx(np.zeros(6))  # a record missing from a record modality has no rows
    assert got[3] == pytest.approx(np.zeros(6))  # no rows: zeros, so shard features add up
    # Notes are not what a label's record_id names: text bags are always the subject's rows.
    got = bag_features(table, "text", units, vocab_size=5)
    assert got[1] == pytest.approx(subject_1) and got[2] == pytest.approx(subject_1)


def test_dna_kmer_ids_fold_to_a_small_histogram():
    table = token_table([(1, "r", [2, 5 + 4096 - 1, 5 + 255, 5 + 256])])
    got = bag_features(table, "dna", [(1, None)], vocab_size=5 + 4096)
    assert got.shape == (1, 256 + 1)
    assert got[0, :256].sum() == pytest.approx(1.0)
    assert got[0, (5 + 255) % 256] == pytest.approx(0.5)  # ids 5+255 and 5+4095 share their last four bases


def test_image_bag_has_histogram_and_summary_statistics():
    table = image_table([(1, "s", [0.0, 1.0, 2.0, 3.0]), (1, "s", [4.0, 5.0, 6.0, 100.0])])
    edges = np.linspace(0, 8, 5)
    got = bag_features(table, "image", [(1, "s"), (9, None)], intensity_edges=edges)
    hist, stats = got[0, :4], got[0, 4:]
    assert hist == pytest.approx([2 / 8, 2 / 8, 2 / 8, 2 / 8])  # 100 is clipped into the last bin
    pixels = np.array([0, 1, 2, 3, 4, 5, 6, 100.0])
    assert stats[0] == pytest.approx(pixels.mean()) and stats[1] == pytest.approx(pixels.std())
    assert stats[-1] == pytest.approx(np.log1p(2))
    assert not got[1].any()
    assert intensity_edges([table], n_bins=4)[0] >= 0.0


def test_fit_and_predict_handles_missing_classes():
    X = np.arange(12, dtype=float)[:, None]
    prob = fit_and_predict(X, np.zeros(12, dtype=int), X[:3], n_classes=2)
    assert (prob == [[1.0, 0.0]] * 3).all()
    y = (X[:, 0] > 5).astype(int) * 2  # classes 0 and 2 only
    prob = fit_and_predict(X, y, np.array([[0.0], [11.0]]), n_classes=3)
    assert prob.shape == (2, 3) and (prob[:, 1] == 0).all()
    assert prob[0].argmax() == 0 and prob[1].argmax() == 2
    assert prob.sum(axis=1) == pytest.approx([1.0, 1.0])


def synthetic_task(tmp_path, rng, flip_test=False):
    """Text notes where token 7 marks the positive class; two notes per subject; labels per subject."""
    rows, labels = [], []
    for subject in range(1, 121):
        split = "train" if subject <= 90 else "test"
        positive = rng.random() < 0.5
        for note in range(2):
            ids = list(rng.integers(10, 60, 30))
            if positive:
                ids[rng.integers(1, 30)] = 7
            rows.append((subject, split, f"n{subject}-{note}", [1, *ids]))
        label = "pos" if positive != (flip_test and split == "test") else "neg"
        labels.append({"subject_id": subject, "record_id": None, "label": label, "split": split})
    for split in ("train", "test"):
        write_shards(tmp_path / "tokens", "text", split,
                     token_table([(s, r, ids) for s, sp, r, ids in rows if sp == split]))
    return pd.DataFrame(labels)


def test_baseline_learns_a_planted_token_signal(tmp_path):
    labels = synthetic_task(tmp_path, np.random.default_rng(0))
    test = labels[labels["split"] == "test"]
    # A unit with no token rows gets no prediction, as with the model.
    no_rows = pd.DataFrame([{"subject_id": 777, "record_id": None, "label": "pos", "split": "test"}])
    predictions = run_baseline(pd.concat([labels, no_rows]), shard_map(tmp_path / "tokens", ["text"]),
                               tokenizer_map(tmp_path / "tokens", ["text"]), ["text"], ["neg", "pos"])
    assert predictions["subject_id"].tolist() == test["subject_id"].tolist()
    y = (predictions["label"] == "pos").to_numpy(int)
    prob = np.array(predictions["probabilities"].tolist())
    assert point_metrics(y, prob)["auroc"] > 0.95
    assert (predictions["predicted"] == predictions["label"]).mean() > 0.9


def test_baseline_is_fitted_on_train_only(tmp_path):
    # Test labels are the opposite of what their features say: a model that saw them could not score ~0.
    labels = synthetic_task(tmp_path, np.random.default_rng(1), flip_test=True)
    labels = pd.concat([labels, pd.DataFrame([{"subject_id": 999, "record_id": None, "label": "pos",
                                                "split": "val"}])])
    predictions = run_baseline(labels, shard_map(tmp_path / "tokens", ["text"]), tokenizer_map(tmp_path / "tokens", ["text"]),
                               ["text"], ["neg", "pos"], seed=0)
    assert 999 not in predictions["subject_id"].tolist()  # val rows are neither fitted nor predicted
    y = (predictions["label"] == "pos").to_numpy(int)
    assert point_metrics(y, np.array(predictions["probabilities"].tolist()))["auroc"] < 0.1


def test_image_and_text_fuse_per_record(tmp_path):
    rng = np.random.default_rng(2)
    images, notes, labels = [], [], []
    for subject in range(1, 81):
        split = "train" if subject <= 60 else "test"
        for series in range(2):
            bright = rng.random() < 0.5  # record-level label: bright series are "lesion"
            record = f"s{subject}-{series}"
            pixels = rng.normal(1.5 if bright else -1.0, 0.5, 16).astype(np.float32).tolist()
            images.append((split, (subject, record, pixels)))
            labels.append({"subject_id": subject, "record_id": record, "split": split,
                           "label": "lesion" if bright else "normal"})
        notes.append((split, (subject, str(subject), list(rng.integers(0, 20, 10)))))
    for split in ("train", "test"):
        write_shards(tmp_path / "tokens", "image", split, image_table([r for s, r in images if s == split]))
        write_shards(tmp_path / "tokens", "text", split, token_table([r for s, r in notes if s == split]))
    tokenizer = tmp_path / "tokens" / "text" / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text(json.dumps(
        {"model": {"vocab": {str(i): i for i in range(18)}}, "added_tokens": [{"id": 19, "content": "[X]"}]}))
    assert tokenizer_vocab_size(tokenizer) == 20
    pq.write_table(pa.Table.from_pylist(labels), tmp_path / "labels.parquet")
    label_frame = pd.DataFrame(labels)
    predictions = run_baseline(label_frame, shard_map(tmp_path / "tokens", ["image", "text"]),
                               tokenizer_map(tmp_path / "tokens", ["image", "text"]), ["image", "text"],
                               ["lesion", "normal"])
    assert len(predictions) == 40 and set(predictions["record_id"]) == {f"s{s}-{k}" for s in range(61, 81)
                                                                         for k in range(2)}
    assert baseline_name(["image", "text"]) == "logistic_regression_token_histogram_and_intensity_histogram"
    y = (predictions["label"] == "lesion").to_numpy(int)
    assert point_metrics(y, np.array(predictions["probabilities"].tolist())[:, ::-1])["auroc"] > 0.95
