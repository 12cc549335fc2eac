"""Subject-level train/val/test split shared by every modality and task.

A subject's split is a pure function of its pseudonym, so adding subjects never moves existing ones and
no subject can straddle two splits whichever modality it comes from.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmhealth.core.parquet_io import read_tables, write_table
from mmhealth.core.pseudonym import unit_interval

log = logging.getLogger("subject_split")
SPLITS = ("train", "val", "test")


def split_of(subject_id: int, fractions: dict[str, float]) -> str:
    """The split a subject belongs to, from cumulative fractions in train, val, test order."""
    u = unit_interval(subject_id)
    edge = 0.0
    for name in SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return SPLITS[-1]  # u within rounding of 1.0


def subject_split(subject_ids: np.ndarray, fractions: dict[str, float]) -> pa.Table:
    """Table of (subject_id, split) for the unique subjects, sorted by subject_id."""
    unique = np.unique(np.asarray(subject_ids, dtype=np.int64))
    splits = [split_of(int(s), fractions) for s in unique]
    return pa.table({"subject_id": pa.array(unique, pa.int64()), "split": pa.array(splits, pa.string())})


def write_subject_split(parts: list[str], fractions: dict[str, float], out: str) -> pa.Table:
    """The split of every subject found in the ingested parts (any modality), written to `out`."""
    ids = read_tables(parts, columns=["subject_id"]).column("subject_id").to_numpy()
    table = subject_split(ids, fractions)
    write_table(table, out, stage="split", params={"fractions": fractions})
    counts = pc.value_counts(table.column("split")).to_pylist()
    log.info("%d subjects: %s", table.num_rows, {c["values"]: c["counts"] for c in counts})
    return table
