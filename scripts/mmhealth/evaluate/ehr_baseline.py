"""EHR baseline features per subject, from the ingested MEDS events (raw numeric values survive there).

Per code: the event count, and for codes with numeric values the last value, the mean value and whether the
subject has no value (missing values stay NaN, imputed with the train median inside each CV fold); plus age
in years at the subject's last event (from MEDS_BIRTH; dates are shifted per subject, so differences hold)
and sex (the SEX// codes' counts). Notes (events with text_value) belong to the text modality and are left out.
Codes are those of train subjects, the most frequent MAX_CODES by subjects having them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmhealth.core.parquet_io import read_tables
from mmhealth.evaluate.baseline_bags import Unit
from mmhealth.evaluate.baseline_select import Variant

MAX_CODES = 256
BIRTH_CODE = "MEDS_BIRTH"
SEX_PREFIX = "SEX//"
DAYS_PER_YEAR = 365.25


def read_events(parts: Sequence[Path], subjects: set[int]) -> pd.DataFrame:
    """Structured events (no text_value) of `subjects`: subject_id, time, code, value; time-ordered per subject
    (static events first, file order kept among equal times)."""
    table = read_tables(parts, ["subject_id", "time", "code", "numeric_value", "text_value"])
    events = table.to_pandas()
    events = events[events["text_value"].isna() & events["subject_id"].isin(subjects)].drop(columns="text_value")
    events = events.rename(columns={"numeric_value": "value"}).astype({"value": "float64"})
    events["order"] = np.arange(len(events))
    return events.sort_values(["subject_id", "time", "order"], na_position="first", kind="stable")


def select_codes(train_events: pd.DataFrame, max_codes: int = MAX_CODES) -> tuple[list[str], list[str]]:
    """(codes kept, codes among them with numeric values): by subjects having each, then by name; SEX// kept."""
    codes = train_events[train_events["code"] != BIRTH_CODE]
    by_subjects = codes.groupby("code")["subject_id"].nunique()
    ranked = sorted(by_subjects.index, key=lambda c: (not c.startswith(SEX_PREFIX), -by_subjects[c], c))
    kept = ranked[:max_codes]
    valued = set(codes.loc[codes["value"].notna(), "code"])
    return kept, [c for c in kept if c in valued]


def subject_features(events: pd.DataFrame, subjects: Sequence[int], codes: Sequence[str],
                     valued: Sequence[str]) -> pd.DataFrame:
    """One row per subject in `subjects` order: count:<code>, last:<code>, mean:<code>, missing:<code>, age,
    age_missing. A subject without events has counts 0, missing 1, values NaN."""
    index = pd.Index(subjects, name="subject_id")
    kept = events[events["code"].isin(codes)]
    counts = kept.groupby(["subject_id", "code"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=index, columns=list(codes), fill_value=0).add_prefix("count:")
    values = kept[kept["value"].notna() & kept["code"].isin(valued)]
    grouped = values.groupby(["subject_id", "code"])["value"]
    last = grouped.last().unstack().reindex(index=index, columns=list(valued)).add_prefix("last:")
    mean = grouped.mean().unstack().reindex(index=index, columns=list(valued)).add_prefix("mean:")
    missing = last.isna().astype(float).rename(columns=lambda c: "missing:" + c.removeprefix("last:"))
    births = events[events["code"] == BIRTH_CODE].groupby("subject_id")["time"].min()
    last_time = events[events["code"] != BIRTH_CODE].groupby("subject_id")["time"].max()
    age = ((last_time - births).dt.total_seconds() / (86400 * DAYS_PER_YEAR)).reindex(index)
    frame = pd.concat([counts.astype(float), last, mean, missing], axis=1)
    frame["age"] = age.to_numpy(dtype=float)
    frame["age_missing"] = frame["age"].isna().astype(float)
    return frame


def ehr_variants(parts: Sequence[Path], units: dict[str, Sequence[Unit]]) -> tuple[list[Variant], dict[str, np.ndarray]]:
    """The per-code feature variant (subject-level: EHR bags are a subject's events) and, per split, the units
    whose subject has structured events."""
    if not parts:
        raise FileNotFoundError("the EHR baseline needs the ingested EHR parts (ingest/ehr/part-*.parquet)")
    subjects = {split: [u[0] for u in units[split]] for split in ("train", "test")}
    events = read_events(parts, set(subjects["train"]) | set(subjects["test"]))
    codes, valued = select_codes(events[events["subject_id"].isin(subjects["train"])])
    frames = {split: subject_features(events, subjects[split], codes, valued) for split in subjects}
    has_rows = {split: np.isin(subjects[split], events["subject_id"].unique()) for split in subjects}

    def impute_and_scale():
        return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler())

    variant = Variant("ehr", "ehr_code_count_last_mean_age_sex",
                      "EHR per-code count, last and mean value (missing flagged), age and sex",
                      {"features": "per-code count, last value, mean value, missing indicator; age; sex",
                       "codes": len(codes), "codes_with_values": len(valued), "columns": frames["train"].shape[1]},
                      frames["train"].to_numpy(float), frames["test"].to_numpy(float), impute_and_scale, dense=True)
    return [variant], has_rows
