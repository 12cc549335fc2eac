"""Logistic-regression baseline on simple features of the same token shards the model sees.

One feature vector per label unit (a "bag": every token row of a subject, or of one record for record-level
labels). text/dna/ehr: the mean over the bag's rows of each row's normalised token-id histogram; image: a
histogram of pixel values plus mean, std and percentiles over the bag. Every modality adds log(1 + rows).
Several modalities are concatenated. Fitted on the train split only, evaluated on the test split only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from mmhealth.core.modalities import MODALITIES, RECORD_MODALITIES, TOKEN_MODALITIES
from mmhealth.core.parquet_io import read_tables

log = logging.getLogger("baseline")

# Token ids are folded modulo this many bins (hashing trick) to keep the feature count small. For dna,
# 6-mer ids laid out in base 4 fold modulo 4^4 onto their last four bases: a 4-mer histogram.
MAX_TOKEN_BINS = {"dna": 256, "text": 4096, "ehr": 4096}
INTENSITY_BINS = 32
INTENSITY_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
# Used only when no train-derived edges are given; pixel values are normalised, so roughly standard.
DEFAULT_INTENSITY_EDGES = np.linspace(-3.0, 3.0, INTENSITY_BINS + 1)
C_GRID = (0.01, 0.1, 1.0)
CV_FOLDS = 3
EDGE_SAMPLE = 1_000_000

Unit = tuple[int, str | None]


def baseline_name(modalities: Sequence[str]) -> str:
    """Name of the baseline for these modalities, e.g. 'logistic_regression_token_histogram'."""
    unknown = set(modalities) - set(MODALITIES)
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    kinds = []
    if any(m in TOKEN_MODALITIES for m in modalities):
        kinds.append("token_histogram")
    if "image" in modalities:
        kinds.append("intensity_histogram")
    return "logistic_regression_" + "_and_".join(kinds)


def label_units(labels: pd.DataFrame) -> list[Unit]:
    """(subject_id, record_id or None) for each label row, in row order."""
    records = labels["record_id"] if "record_id" in labels else pd.Series([None] * len(labels))
    return [(int(s), None if pd.isna(r) else str(r)) for s, r in zip(labels["subject_id"], records, strict=True)]


def _row_unit_pairs(table: pa.Table, units: Sequence[Unit], by_record: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row, unit) index pairs: with `by_record` a record unit takes its record's rows, else its subject's."""
    rows = pd.DataFrame({"subject_id": table.column("subject_id").to_numpy(zero_copy_only=False),
                         "record_id": table.column("record_id").to_pylist(), "row": np.arange(len(table))})
    unit_df = pd.DataFrame({"subject_id": np.array([u[0] for u in units], dtype=np.int64),
                            "record_id": [u[1] for u in units], "unit": np.arange(len(units))})
    is_record = unit_df["record_id"].notna() & by_record
    by_rec = unit_df[is_record].merge(rows, on=["subject_id", "record_id"])
    by_subject = unit_df[~is_record].drop(columns="record_id").merge(rows.drop(columns="record_id"),
                                                                       on="subject_id")
    pairs = pd.concat([by_rec[["row", "unit"]], by_subject[["row", "unit"]]])
    return pairs["row"].to_numpy(np.int64), pairs["unit"].to_numpy(np.int64)


def _list_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-row offsets of a list column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        array = pc.fill_null(array, pa.scalar([], type=array.type))
    offsets = array.offsets.to_numpy() - array.offsets[0].as_py()
    return array.flatten().to_numpy(zero_copy_only=False), offsets


def _token_features(table: pa.Table, rows: np.ndarray, units: np.ndarray, n_units: int, n_bins: int) -> np.ndarray:
    ids, offsets = _list_parts(table.column("input_ids"))
    lengths = np.diff(offsets)
    row_of_token = np.repeat(np.arange(len(lengths)), lengths)
    weight = 1.0 / np.maximum(lengths, 1)[row_of_token]
    row_hist = sp.csr_matrix((weight, (row_of_token, ids.astype(np.int64) % n_bins)), shape=(len(lengths), n_bins))
    rows_per_unit = np.bincount(units, weights=(lengths[rows] > 0).astype(np.float64), minlength=n_units)
    share = np.where(lengths[rows] > 0, 1.0 / np.maximum(rows_per_unit[units], 1.0), 0.0)
    unit_of_row = sp.csr_matrix((share, (units, rows)), shape=(n_units, len(lengths)))
    return np.asarray((unit_of_row @ row_hist).todense())


def _image_features(table: pa.Table, rows: np.ndarray, units: np.ndarray, n_units: int,
                    edges: np.ndarray) -> np.ndarray:
    values, offsets = _list_parts(table.column("pixel_values"))
    width = len(edges) - 1 + 2 + len(INTENSITY_PERCENTILES)
    out = np.zeros((n_units, width))
    order = np.argsort(units, kind="stable")
    for unit, unit_rows in zip(*_groups(units[order], rows[order]), strict=True):
        pixels = np.concatenate([values[offsets[r]:offsets[r + 1]] for r in unit_rows]).astype(np.float64)
        if len(pixels) == 0:
            continue
        # Values outside the edges count in the outer bins, so every pixel is in the histogram.
        hist, _ = np.histogram(np.clip(pixels, edges[0], edges[-1]), bins=edges)
        out[unit] = np.concatenate([hist / len(pixels), [pixels.mean(), pixels.std()],
                                    np.percentile(pixels, INTENSITY_PERCENTILES)])
    return out


def _groups(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct sorted keys and the values under each (keys must be sorted)."""
    distinct, starts = np.unique(keys, return_index=True)
    return distinct, np.split(values, starts[1:])


def bag_features(tokens_table: pa.Table, modality: str, unit_ids: Sequence[Unit], vocab_size: int | None = None,
                 intensity_edges: np.ndarray | None = None) -> np.ndarray:
    """Feature matrix, one row per unit in `unit_ids` order; all zeros for a unit with no rows in the table.

    Zeros for absent units mean the features of disjoint tables (shards) add up to those of their union.
    The last column is log(1 + rows in the bag). A unit's bag is the rows of its record in image and dna
    (none if the record is not there) and the rows of its subject otherwise, as the model's bags are.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    rows, units = _row_unit_pairs(tokens_table, unit_ids, modality in RECORD_MODALITIES)
    n_units = len(unit_ids)
    if modality == "image":
        edges = DEFAULT_INTENSITY_EDGES if intensity_edges is None else np.asarray(intensity_edges)
        content = _image_features(tokens_table, rows, units, n_units, edges)
    else:
        n_bins = min(vocab_size or MAX_TOKEN_BINS[modality], MAX_TOKEN_BINS[modality])
        content = _token_features(tokens_table, rows, units, n_units, n_bins)
    n_rows = np.bincount(units, minlength=n_units)
    return np.column_stack([content, np.log1p(n_rows)])


def intensity_edges(tables: Sequence[pa.Table], n_bins: int = INTENSITY_BINS, seed: int = 0) -> np.ndarray:
    """Equal-width histogram edges spanning the 0.5-99.5th percentile of (a sample of) the pixel values."""
    parts = [_list_parts(t.column("pixel_values"))[0] for t in tables if len(t)]
    values = np.concatenate(parts) if parts else np.empty(0)
    if len(values) == 0:
        return DEFAULT_INTENSITY_EDGES.copy()
    if len(values) > EDGE_SAMPLE:
        values = np.random.default_rng(seed).choice(values, EDGE_SAMPLE, replace=False)
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def fit_and_predict(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, seed: int = 0,
                    n_classes: int | None = None) -> np.ndarray:
    """Test-set class probabilities (n_test, n_classes) of StandardScaler + LogisticRegression fitted on train.

    C is chosen from a small grid by stratified CV on the train rows when every class has enough of them.
    """
    train_y = np.asarray(train_y, dtype=np.int64)
    n_classes = n_classes or int(train_y.max()) + 1
    prob = np.zeros((len(test_X), n_classes))
    present, counts = np.unique(train_y, return_counts=True)
    if len(present) == 1:
        log.warning("train split holds a single class (%d); the baseline predicts it for every row", present[0])
        prob[:, present[0]] = 1.0
        return prob
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    if counts.min() >= CV_FOLDS:
        model = GridSearchCV(model, {"logisticregression__C": list(C_GRID)}, scoring="neg_log_loss",
                             cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed))
    model.fit(train_X, train_y)
    if isinstance(model, GridSearchCV):
        log.info("baseline C=%s by %d-fold CV on train", model.best_params_["logisticregression__C"], CV_FOLDS)
    prob[:, model.classes_] = model.predict_proba(test_X)
    return prob


def tokenizer_vocab_size(tokenizer_dir: Path) -> int | None:
    """Number of token ids of a tokenizers `tokenizer.json` (model vocab and added tokens); None if absent."""
    path = tokenizer_dir / "tokenizer.json"
    if not path.exists():
        return None
    spec = json.loads(path.read_text())
    vocab = spec.get("model", {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in spec.get("added_tokens") or []]
    return max(ids) + 1 if ids else None


def split_features(paths: Sequence[Path], modality: str, split: str, units: Sequence[Unit],
                   vocab_size: int | None, edges: np.ndarray | None) -> np.ndarray:
    """Features of `units` summed over the split's shard files (each subject lives in exactly one shard)."""
    if not paths:
        raise FileNotFoundError(f"no {modality} {split} token shards given")
    column = "pixel_values" if modality == "image" else "input_ids"
    total = None
    for path in tqdm(paths, desc=f"{modality}/{split}", unit="shard", leave=False):
        part = bag_features(read_tables([path], ["subject_id", "record_id", column]), modality, units,
                            vocab_size, edges)
        total = part if total is None else total + part
    return total


def run_baseline(labels: pd.DataFrame, shards: dict[str, dict[str, list[Path]]], tokenizers: dict[str, Path],
                 modalities: Sequence[str], classes: list[str], seed: int = 0) -> pd.DataFrame:
    """Test-split predictions (subject_id, record_id, label, predicted, probabilities) of the baseline, fitted
    on the train split; `shards` is split -> modality -> token shard files, `tokenizers` modality -> folder."""
    train, test = labels[labels["split"] == "train"], labels[labels["split"] == "test"]
    if train.empty or test.empty:
        raise ValueError(f"need train and test labels, got {len(train)} train and {len(test)} test rows")
    index = {name: k for k, name in enumerate(classes)}
    unknown = sorted(set(labels["label"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"labels not among the classes {classes}: {unknown[:5]}")
    train_units, test_units = label_units(train), label_units(test)
    train_parts, test_parts = [], []
    for modality in modalities:
        vocab = tokenizer_vocab_size(Path(tokenizers[modality]))
        edges = None
        if modality == "image":
            edges = intensity_edges([read_tables([p], ["pixel_values"]) for p in shards["train"][modality]], seed=seed)
        train_parts.append(split_features(shards["train"][modality], modality, "train", train_units, vocab, edges))
        test_parts.append(split_features(shards["test"][modality], modality, "test", test_units, vocab, edges))
    train_X, test_X = np.hstack(train_parts), np.hstack(test_parts)
    # Units without rows in any modality get no model prediction either (bags.build_units); drop them alike.
    keep_train = np.column_stack([part[:, -1] for part in train_parts]).any(axis=1)
    keep_test = np.column_stack([part[:, -1] for part in test_parts]).any(axis=1)
    if not keep_train.all() or not keep_test.all():
        log.warning("%d train and %d test units have no rows in %s and are left out",
                    (~keep_train).sum(), (~keep_test).sum(), list(modalities))
    train, test = train[keep_train], test[keep_test]
    test_units = [u for u, k in zip(test_units, keep_test, strict=True) if k]
    train_y = train["label"].astype(str).map(index).to_numpy(np.int64)
    prob = fit_and_predict(train_X[keep_train], train_y, test_X[keep_test], seed, len(classes))
    return pd.DataFrame({
        "subject_id": test["subject_id"].to_numpy(np.int64),
        "record_id": [u[1] for u in test_units],
        "label": test["label"].astype(str).to_numpy(),
        "predicted": [classes[k] for k in prob.argmax(axis=1)],
        "probabilities": [row.tolist() for row in prob],
    })
