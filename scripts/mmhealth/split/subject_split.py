"""Subject-level train/val/test split shared by every modality and task.

A labelled subject's split is its stratified assignment (split/stratify.py); any other subject's is a pure
function of its pseudonym. Either way a subject never moves when others are added, and no subject can
straddle two splits whichever modality it comes from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

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


def subject_split(subject_ids: np.ndarray, fractions: dict[str, float],
                  assigned: Mapping[int, str] | None = None) -> pa.Table:
    """Table of (subject_id, split) for the unique subjects, sorted by subject_id; `assigned` (labelled
    subjects' stratified splits) overrides the hash."""
    assigned = assigned or {}
    unique = np.unique(np.asarray(subject_ids, dtype=np.int64))
    splits = [assigned.get(int(s)) or split_of(int(s), fractions) for s in unique]
    return pa.table({"subject_id": pa.array(unique, pa.int64()), "split": pa.array(splits, pa.string())})


def write_subject_split(parts: list[str], fractions: dict[str, float], out: str,
                        assigned: Mapping[int, str] | None = None) -> pa.Table:
    """The split of every subject found in the ingested parts (any modality), written to `out`."""
    ids = read_tables(parts, columns=["subject_id"]).column("subject_id").to_numpy()
    table = subject_split(ids, fractions, assigned)
    stratified = int(np.isin(table.column("subject_id").to_numpy(), list(assigned or {})).sum())
    write_table(table, out, stage="split",
                params={"fractions": fractions, "method": "label-stratified, then pseudonym hash",
                        "stratified_subjects": stratified})
    counts = pc.value_counts(table.column("split")).to_pylist()
    log.info("%d subjects: %s", table.num_rows, {c["values"]: c["counts"] for c in counts})
    return table
