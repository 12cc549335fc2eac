"""EHR modality: train-only vocabulary and bins, time order, recency truncation, transformers round trip."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FRACTIONS, subjects_for
from mmhealth.core.config import from_config
from mmhealth.core.special_tokens import CLS_ID, UNK_ID
from mmhealth.tokenize import ehr
from mmhealth.tokenize.common import fit_modality_tokenizer
from mmhealth.tokenize.ehr import EhrParams, assign_bins, encode_rows, fit_bin_edges, recent_events

EVENTS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                           ("numeric_value", pa.float32()), ("text_value", pa.string())])
T0 = dt.datetime(2021, 3, 1)
GLUCOSE = "LAB//GLUCOSE SERUM"  # codes may hold spaces and '//'


def events(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(EVENTS_SCHEMA.names, row, strict=True)) for row in rows],
                                schema=EVENTS_SCHEMA)


def train_rows() -> list[tuple]:
    rows = [(1, None, "SEX//F", None, None), (2, None, "SEX//F", None, None)]
    rows += [(1 + i % 2, T0 + dt.timedelta(days=i), GLUCOSE, float(i + 1), None) for i in range(100)]
    rows += [(1, T0, "DX//RARE", None, None), (1, T0, "NOTE", None, "a note is text, not ehr")]
    return rows


@pytest.fixture
def fitted(tmp_path):
    val_rows = [(3, T0, "DX//VALONLY", None, None), (3, T0, "DX//VALONLY", None, None),
                (3, T0, GLUCOSE, 1e6, None), (3, T0, GLUCOSE, 1e6, None)]  # huge values: must not move edges
    part, ids = tmp_path / "part-0.parquet", subjects_for({1: "train", 2: "train", 3: "val"})
    pq.write_table(events([(ids[r[0]], *r[1:]) for r in train_rows() + val_rows]), part)
    out = tmp_path / "tokenizer"
    fit_modality_tokenizer(ehr, [part], FRACTIONS, out, {"min_count": 2, "numeric_bins": 10})
    return out


def vocab_of(folder) -> dict[str, int]:
    return json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]


def test_vocabulary_and_bins_come_from_train_only(fitted):
    vocab = vocab_of(fitted)
    assert GLUCOSE in vocab and "SEX//F" in vocab
    assert "DX//RARE" not in vocab and "DX//VALONLY" not in vocab and "NOTE" not in vocab
    assert [vocab[f"Q{i}"] for i in range(10)] == list(range(5, 15))
    edges = json.loads((fitted / "numeric_bins.json").read_text())["edges"][GLUCOSE]
    assert len(edges) == 9 and max(edges) < 100  # quantiles of 1..100, val's 1e6 ignored
    assert np.allclose(edges, np.quantile(np.arange(1, 101), np.linspace(0, 1, 11)[1:-1]))


def test_subject_sequence_is_time_ordered_with_bins(fitted):
    rows = events([(7, T0 + dt.timedelta(days=2), GLUCOSE, 99.0, None),
                   (7, T0 + dt.timedelta(days=1), "DX//VALONLY", None, None),
                   (7, T0, GLUCOSE, 2.0, None),
                   (7, None, "SEX//F", None, None),
                   (8, T0, GLUCOSE, None, None)])
    table = encode_rows(rows, fitted, from_config(EhrParams))
    vocab = vocab_of(fitted)
    assert table.column("record_id").to_pylist() == ["7", "8"]
    assert table.column("input_ids")[0].as_py() == [CLS_ID, vocab["SEX//F"], vocab[GLUCOSE], vocab["Q0"], UNK_ID,
                                                    vocab[GLUCOSE], vocab["Q9"]]
    assert table.column("input_ids")[1].as_py() == [CLS_ID, vocab[GLUCOSE]]  # no value, no bin token


def test_too_long_subject_keeps_most_recent_events(fitted):
    rows = events([(7, T0 + dt.timedelta(days=d), GLUCOSE, float(2 * d), None) for d in range(50)]
                  + [(7, T0 + dt.timedelta(days=60), "SEX//F", None, None)])
    ids = encode_rows(rows, fitted, from_config(EhrParams, max_length=8)).column("input_ids")[0].as_py()
    vocab = vocab_of(fitted)
    # budget 7 after [CLS]: the newest event (1 token) and the three glucose events before it (2 tokens each)
    assert len(ids) == 8 and ids[0] == CLS_ID and ids[-1] == vocab["SEX//F"]
    assert ids[1:7:2] == [vocab[GLUCOSE]] * 3 and ids[2:7:2] == [vocab["Q9"]] * 3  # values 94-98: top decile
    assert recent_events([2, 2, 1, 2], budget=4) == 2  # never keeps part of an event


def test_bins_edges_and_assignment():
    codes = ["A"] * 5 + ["B"] * 2
    values = np.array([1, 2, 3, 4, np.nan, 10, 20], dtype=float)
    edges = fit_bin_edges(codes, values, numeric_bins=2, keep={"A"})
    assert edges == {"A": [2.5]}  # B is not in the vocabulary: no edges
    bins = assign_bins([*codes, "A"], np.append(values, 3.0), edges)
    assert bins.tolist() == [0, 0, 1, 1, -1, -2, -2, 1]


def test_transformers_loads_the_folder_with_identical_ids(fitted):
    from transformers import PreTrainedTokenizerFast

    rows = events([(9, None, "SEX//F", None, None), (9, T0, GLUCOSE, 50.0, None), (9, T0, "DX//NEW [MASK]", None, None)])
    ours = encode_rows(rows, fitted, from_config(EhrParams)).column("input_ids")[0].as_py()
    loaded = PreTrainedTokenizerFast.from_pretrained(str(fitted))
    words = ["SEX//F", GLUCOSE, "Q4", "DX//NEW"]
    assert loaded(words, is_split_into_words=True)["input_ids"] == [*ours[:-1], loaded.unk_token_id]
    assert ours[-1] == UNK_ID and len(ours) == 5  # a code holding a special token string stays one [UNK]


def test_numeric_bins_must_match_the_fitted_folder(fitted):
    with pytest.raises(ValueError, match="numeric_bins"):
        encode_rows(events([(7, T0, GLUCOSE, 1.0, None)]), fitted, from_config(EhrParams, numeric_bins=5))


def test_empty_rows_give_an_empty_table(fitted):
    table = encode_rows(events([]), fitted, from_config(EhrParams))
    assert table.num_rows == 0 and table.schema.names == ["subject_id", "record_id", "input_ids"]
