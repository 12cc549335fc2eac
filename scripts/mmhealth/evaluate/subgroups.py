"""Test metrics per subgroup (sex from MEDS `SEX//` events, or any subject attribute table)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from mmhealth.core.parquet_io import read_tables
from mmhealth.evaluate.metrics import point_metrics, prediction_arrays


def sex_subgroups(ehr_parts: Sequence[Path]) -> pd.DataFrame:
    """subject_id -> sex from MEDS `SEX//<value>` events; a subject with several values gets 'conflicting'."""
    table = read_tables(ehr_parts, ["subject_id", "code"])
    table = table.filter(pc.starts_with(table.column("code"), "SEX//"))
    frame = table.to_pandas()
    frame["sex"] = frame["code"].str.removeprefix("SEX//")
    values = frame.groupby("subject_id")["sex"].agg(lambda s: s.iloc[0] if s.nunique() == 1 else "conflicting")
    return values.reset_index()


def group_metrics(y: np.ndarray, prob: np.ndarray, subjects: np.ndarray, groups: pd.Series,
                  n_classes: int) -> list[dict]:
    """Per value of `groups` (aligned with y; missing is 'unknown'): units, subjects, class fractions,
    AUROC (None where undefined) and accuracy."""
    labels = groups.astype("object").where(groups.notna(), "unknown").astype(str).to_numpy()
    rows = []
    for value in sorted(set(labels)):
        mask = labels == value
        scores = point_metrics(y[mask], prob[mask])
        rows.append({"group": value, "n": int(mask.sum()), "subjects": len(np.unique(subjects[mask])),
                     "class_fractions": (np.bincount(y[mask], minlength=n_classes) / mask.sum()).tolist(),
                     "auroc": scores["auroc"] if math.isfinite(scores["auroc"]) else None,
                     "accuracy": scores["accuracy"]})
    return rows


def subgroup_metrics(predictions: pd.DataFrame, classes: list[str], subgroups: pd.DataFrame | None) -> dict:
    """{attribute: [per-group metrics]} for every column of `subgroups` (subject_id and attributes)."""
    columns = [c for c in (subgroups.columns if subgroups is not None else []) if c != "subject_id"]
    if not columns:
        return {}
    y, prob, subjects = prediction_arrays(predictions, classes)
    joined = subgroups.drop_duplicates("subject_id").set_index("subject_id").reindex(subjects)
    return {str(c): group_metrics(y, prob, subjects, joined[c].reset_index(drop=True), len(classes))
            for c in columns}
