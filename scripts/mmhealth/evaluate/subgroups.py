"""Test metrics per subgroup, with bootstrap CIs: sex from MEDS `SEX//` events and age bands from the
shifted event dates, or any subject attribute table.

Age is the time from a subject's MEDS_BIRTH event to the subject's latest timed event. Both dates carry the
same keyed per-subject shift, so the difference is the real age while no real date is ever read or
written; only the band leaves this module. A group too small for a stable estimate says so instead of
showing a number, and a group whose AUROC CI lies wholly below the overall AUROC is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from mmhealth.core.parquet_io import read_tables
from mmhealth.evaluate.metrics import bootstrap_metrics, prediction_arrays

AGE_BANDS = ((0, 40, "<40"), (40, 65, "40-64"), (65, math.inf, "65+"))  # years; lower bound inclusive
MIN_SUBJECTS = 10  # fewer subjects in a group: "too few to estimate"
MIN_PER_CLASS = 5  # fewer units of any class present overall: no AUROC for the group
TOO_FEW = "too few to estimate"


def sex_subgroups(ehr_parts: Sequence[Path]) -> pd.DataFrame:
    """subject_id -> sex from MEDS `SEX//<value>` events; a subject with several values gets 'conflicting'."""
    table = read_tables(ehr_parts, ["subject_id", "code"])
    table = table.filter(pc.starts_with(table.column("code"), "SEX//"))
    frame = table.to_pandas()
    frame["sex"] = frame["code"].str.removeprefix("SEX//")
    values = frame.groupby("subject_id")["sex"].agg(lambda s: s.iloc[0] if s.nunique() == 1 else "conflicting")
    return values.reset_index()


def age_band(years: float) -> str | None:
    for low, high, name in AGE_BANDS:
        if low <= years < high:
            return name
    return None


def age_subgroups(ehr_parts: Sequence[Path]) -> pd.DataFrame:
    """subject_id -> age_band (age at the subject's latest event); subjects without a birth event or without
    a timed event after it are left out (they show as 'unknown')."""
    frame = read_tables(ehr_parts, ["subject_id", "time", "code"]).to_pandas()
    frame = frame[frame["time"].notna()]
    is_birth = frame["code"] == "MEDS_BIRTH"
    birth = frame[is_birth].groupby("subject_id")["time"].min()
    latest = frame[~is_birth].groupby("subject_id")["time"].max()
    years = ((latest - birth.reindex(latest.index)).dt.days / 365.25).dropna()
    years = years[years >= 0]
    return pd.DataFrame({"subject_id": years.index.to_numpy(), "age_band": [age_band(v) for v in years]})


def subject_attributes(ehr_parts: Sequence[Path]) -> pd.DataFrame | None:
    """Sex and age band per subject from the ingested EHR events; None without EHR input."""
    if not ehr_parts:
        return None
    return sex_subgroups(ehr_parts).merge(age_subgroups(ehr_parts), on="subject_id", how="outer")


def group_metrics(y: np.ndarray, prob: np.ndarray, subjects: np.ndarray, groups: pd.Series, n_classes: int,
                  overall_auroc: float | None, n_boot: int, seed: int) -> list[dict]:
    """Per value of `groups` (aligned with y; missing is 'unknown'): units, subjects, class fractions and,
    when large enough, AUROC and accuracy with subject-bootstrap CIs; `below_overall` flags an AUROC CI
    wholly below the overall AUROC."""
    labels = groups.astype("object").where(groups.notna(), "unknown").astype(str).to_numpy()
    present = np.unique(y)
    rows = []
    for value in sorted(set(labels)):
        mask = labels == value
        counts = np.bincount(y[mask], minlength=n_classes)
        row = {"group": value, "n": int(mask.sum()), "subjects": len(np.unique(subjects[mask])),
               "class_fractions": (counts / mask.sum()).tolist(), "auroc": None, "accuracy": None,
               "below_overall": False}
        if row["subjects"] < MIN_SUBJECTS or counts[present].min() < MIN_PER_CLASS:
            rows.append({**row, "note": TOO_FEW})
            continue
        scores = bootstrap_metrics(y[mask], prob[mask], clusters=subjects[mask], n_boot=n_boot, seed=seed)
        row["auroc"], row["accuracy"] = scores["auroc"], scores["accuracy"]
        upper = scores["auroc"]["ci"][1]
        row["below_overall"] = bool(overall_auroc is not None and math.isfinite(upper) and upper < overall_auroc)
        rows.append(row)
    return rows


def subgroup_metrics(predictions: pd.DataFrame, classes: list[str], subgroups: pd.DataFrame | None,
                     overall_auroc: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """{attribute: [per-group metrics]} for every column of `subgroups` (subject_id and attributes)."""
    columns = [c for c in (subgroups.columns if subgroups is not None else []) if c != "subject_id"]
    if not columns:
        return {}
    y, prob, subjects = prediction_arrays(predictions, classes)
    joined = subgroups.drop_duplicates("subject_id").set_index("subject_id").reindex(subjects)
    return {str(c): group_metrics(y, prob, subjects, joined[c].reset_index(drop=True), len(classes),
                                  overall_auroc, n_boot, seed) for c in columns}
