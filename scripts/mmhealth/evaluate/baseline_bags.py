"""Label units and their bags of token rows, for the baseline: the same bags the model pools.

A unit is (subject_id, record_id or None). In a record modality (image, dna) a unit with a record_id takes
the rows of that record (none if the record is absent); otherwise it takes every row of its subject, as
`mmhealth.train.bags.build_bags` does for the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from mmhealth.core.modalities import RECORD_MODALITIES

Unit = tuple[int, str | None]


def label_units(labels: pd.DataFrame) -> list[Unit]:
    """(subject_id, record_id or None) for each label row, in row order."""
    records = labels["record_id"] if "record_id" in labels else pd.Series([None] * len(labels))
    return [(int(s), None if pd.isna(r) else str(r)) for s, r in zip(labels["subject_id"], records, strict=True)]


def row_unit_pairs(table: pa.Table, units: Sequence[Unit], modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(row, unit) index pairs: every token row of `table` in every unit's bag (a row may be in several)."""
    rows = pd.DataFrame({"subject_id": table.column("subject_id").to_numpy(zero_copy_only=False),
                         "record_id": table.column("record_id").to_pylist(), "row": np.arange(len(table))})
    unit_df = pd.DataFrame({"subject_id": np.array([u[0] for u in units], dtype=np.int64),
                            "record_id": [u[1] for u in units], "unit": np.arange(len(units))})
    is_record = unit_df["record_id"].notna() & (modality in RECORD_MODALITIES)
    by_rec = unit_df[is_record].merge(rows, on=["subject_id", "record_id"])
    by_subject = unit_df[~is_record].drop(columns="record_id").merge(rows.drop(columns="record_id"),
                                                                       on="subject_id")
    pairs = pd.concat([by_rec[["row", "unit"]], by_subject[["row", "unit"]]])
    return pairs["row"].to_numpy(np.int64), pairs["unit"].to_numpy(np.int64)


def list_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-row offsets (starting at 0) of a list column; a null row is an empty list."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        array = pc.fill_null(array, pa.scalar([], type=array.type))
    if len(array) == 0:
        return np.zeros(0, np.float32), np.zeros(1, np.int64)
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


def unit_sum(row_matrix: sp.spmatrix, rows: np.ndarray, units: np.ndarray, n_units: int) -> sp.csr_matrix:
    """Per unit, the sum of its rows of `row_matrix` (n_rows, n_features): a bag's total counts."""
    pooling = sp.csr_matrix((np.ones(len(rows)), (units, rows)), shape=(n_units, row_matrix.shape[0]))
    return (pooling @ sp.csr_matrix(row_matrix)).tocsr()


def rows_per_unit(units: np.ndarray, n_units: int) -> np.ndarray:
    """Number of rows in each unit's bag."""
    return np.bincount(units, minlength=n_units)


def train_columns(train: sp.csr_matrix, test: sp.csr_matrix) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Both matrices restricted to the columns that are non-zero in some train row (hashed or k-mer features
    never seen in train carry no weight, and dropping them keeps the models small)."""
    used = np.flatnonzero(np.asarray((train != 0).sum(axis=0)).ravel())
    return train[:, used].tocsr(), test[:, used].tocsr()
