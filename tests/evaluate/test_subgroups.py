"""Subgroups: sex and age bands from shifted MEDS dates, CIs, 'too few to estimate', and the below-overall flag."""

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from mmhealth.core.parquet_io import write_table
from mmhealth.evaluate.subgroups import TOO_FEW, age_band, age_subgroups, subgroup_metrics, subject_attributes


def events(path, rows):
    subject, time, code = zip(*rows, strict=True)
    write_table(pa.table({"subject_id": pa.array(subject, pa.int64()), "time": pa.array(time, pa.timestamp("us")),
                          "code": pa.array(code, pa.string())}), path, "ingest")
    return path


def test_age_band_comes_from_shifted_dates_within_each_subject(tmp_path):
    shift = dt.timedelta(days=-4000)  # a subject's keyed shift moves every date alike
    born = dt.datetime(1950, 6, 1) + shift
    part = events(tmp_path / "part-0.parquet", [
        (1, born, "MEDS_BIRTH"), (1, born + dt.timedelta(days=int(70.5 * 365.25)), "LAB//X"),
        (1, born + dt.timedelta(days=int(30 * 365.25)), "DX//Y"), (1, None, "SEX//F"),
        (2, dt.datetime(1990, 1, 1), "MEDS_BIRTH"), (2, dt.datetime(2020, 1, 1), "NOTE"), (2, None, "SEX//M"),
        (3, dt.datetime(2001, 1, 1), "LAB//X"), (3, None, "SEX//M"),  # no birth event: no age
    ])
    ages = age_subgroups([part]).set_index("subject_id")["age_band"].to_dict()
    assert ages == {1: "65+", 2: "<40"}  # age at the latest event: 70 and 30 years
    attributes = subject_attributes([part]).set_index("subject_id")
    assert attributes.loc[3, "sex"] == "M" and pd.isna(attributes.loc[3, "age_band"])
    assert list(attributes.columns) == ["sex", "age_band"]
    assert subject_attributes([]) is None
    assert [age_band(v) for v in (0, 39.99, 40, 64.9, 65, 101)] == ["<40", "<40", "40-64", "40-64", "65+", "65+"]


def test_small_groups_say_too_few_and_weak_groups_are_flagged():
    rng = np.random.default_rng(0)
    n = 300
    subjects = np.arange(n)
    y = rng.integers(0, 2, n)
    group = np.where(subjects < 140, "good", np.where(subjects < 294, "poor", "tiny"))
    # The model is good on 'good' and guesses on 'poor'.
    signal = np.where(group == "good", 3.0, 0.0) * (2 * y - 1) + rng.normal(0, 1, n)
    p1 = 1 / (1 + np.exp(-signal))
    predictions = pd.DataFrame({"subject_id": subjects, "record_id": None, "label": np.array(["a", "b"])[y],
                                "probabilities": list(np.column_stack([1 - p1, p1]))})
    attributes = pd.DataFrame({"subject_id": subjects, "site": group})
    overall = 0.8
    got = {g["group"]: g for g in subgroup_metrics(predictions, ["a", "b"], attributes, overall, 300, 0)["site"]}
    assert got["tiny"]["note"] == TOO_FEW and got["tiny"]["auroc"] is None and got["tiny"]["subjects"] == 6
    assert got["poor"]["below_overall"] and got["poor"]["auroc"]["ci"][1] < overall
    assert not got["good"]["below_overall"] and got["good"]["auroc"]["ci"][0] > overall
    lo, hi = got["good"]["accuracy"]["ci"]
    assert lo <= got["good"]["accuracy"]["value"] <= hi
