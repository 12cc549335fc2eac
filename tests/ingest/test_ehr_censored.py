"""Censored numeric values (`<5`, `>14.0`, `<= 0.1`): each table's `censored` policy (bound, the default;
quarantine; text), the MEDS extension column `numeric_value_censored`, and the EHR tokens it becomes."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmhealth.core.config import from_config
from mmhealth.core.meds import validate_meds_events
from mmhealth.core.parquet_io import read_tables
from mmhealth.ingest.ehr import MEDS_SCHEMA, EhrInputError, ingest_ehr
from mmhealth.tokenize import ehr as tokenize_ehr

KEY = b"c" * 64
LABS = ("patient_id,charttime,test,value\n"
        "P1,2020-01-01,CRP,<5\n"          # line 2
        "P1,2020-01-02,CRP,>14.0\n"       # line 3
        "P1,2020-01-03,TROP,<= 0.1\n"     # line 4
        "P1,2020-01-04,CRP,≥2\n"          # line 5
        "P1,2020-01-05,CRP,5.4\n"         # line 6
        "P1,2020-01-06,CRP,\n"            # line 7: no value
        "P1,2020-01-07,CRP,< 5 mg/l\n"    # line 8: a unit after the bound is not a number
        "P1,2020-01-08,CRP,<>3\n")        # line 9
UNPARSEABLE = [("line 8", "unparseable numeric_value in column 'value'"),
               ("line 9", "unparseable numeric_value in column 'value'")]


def ingest(tmp_path: Path, **table_keys) -> tuple[list[dict], list[tuple]]:
    (tmp_path / "labs.csv").write_text(LABS, encoding="utf-8")
    spec = {"path": str(tmp_path / "labs.csv"), "subject_id": "patient_id", "time": "charttime",
            "events": [{"code": "LAB//{test}", "numeric_value": "value"}], **table_keys}
    manifest = ingest_ehr([spec], KEY, tmp_path / "out", 1)
    assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"] == 8
    table = read_tables([tmp_path / "out" / "part-0.parquet"])
    assert table.schema.remove_metadata() == MEDS_SCHEMA
    validate_meds_events(table)  # the extension column keeps the table valid MEDS
    quarantine = [(r["locator"], r["reason"]) for r in pq.read_table(tmp_path / "out" / "quarantine.parquet")
                  .to_pylist()]
    return table.to_pylist(), quarantine


def values(rows: list[dict]) -> list[tuple]:
    return [(r["code"], None if r["numeric_value"] is None or math.isnan(r["numeric_value"])
             else round(r["numeric_value"], 4), r["numeric_value_censored"], r["text_value"]) for r in rows]


def test_bound_is_the_default_and_keeps_the_bound_with_its_side(tmp_path):
    rows, quarantine = ingest(tmp_path)
    assert quarantine == UNPARSEABLE
    assert values(rows) == [("LAB//CRP", 5.0, "<", None), ("LAB//CRP", 14.0, ">", None),
                            ("LAB//TROP", 0.1, "<", None), ("LAB//CRP", 2.0, ">", None),
                            ("LAB//CRP", 5.4, None, None), ("LAB//CRP", None, None, None)]


def test_quarantine_refuses_censored_rows_with_the_reason(tmp_path):
    rows, quarantine = ingest(tmp_path, censored="quarantine")
    reason = "censored numeric_value in column 'value' (the table's censored policy is quarantine)"
    assert quarantine == [("line 2", reason), ("line 3", reason), ("line 4", reason), ("line 5", reason),
                          *UNPARSEABLE]
    assert values(rows) == [("LAB//CRP", 5.4, None, None), ("LAB//CRP", None, None, None)]


def test_text_keeps_the_cell_as_text_value(tmp_path):
    rows, quarantine = ingest(tmp_path, censored="text")
    assert quarantine == UNPARSEABLE
    assert values(rows) == [("LAB//CRP", None, None, "<5"), ("LAB//CRP", None, None, ">14.0"),
                            ("LAB//TROP", None, None, "<= 0.1"), ("LAB//CRP", None, None, "≥2"),
                            ("LAB//CRP", 5.4, None, None), ("LAB//CRP", None, None, None)]


def test_text_policy_refuses_a_censored_value_of_an_event_with_its_own_text(tmp_path):
    (tmp_path / "labs.csv").write_text("patient_id,charttime,value,comment\nP1,2020-01-01,<5,ok\n"
                                       "P1,2020-01-02,6,fine\n")
    spec = {"path": str(tmp_path / "labs.csv"), "subject_id": "patient_id", "time": "charttime",
            "censored": "text", "events": [{"code": "LAB", "numeric_value": "value", "text_value": "comment"}]}
    ingest_ehr([spec], KEY, tmp_path / "out", 1)
    assert pq.read_table(tmp_path / "out" / "quarantine.parquet").column("reason").to_pylist() == [
        "censored numeric_value in column 'value' cannot become text_value: the event maps its own text_value "
        "column"]


def test_unknown_policy_is_a_mapping_error(tmp_path):
    with pytest.raises(EhrInputError, match=r"inputs\.ehr\[0\]\.censored: 'drop' is not one of"):
        ingest(tmp_path, censored="drop")


def test_a_bound_becomes_its_bin_then_a_side_token(tmp_path):
    ingest(tmp_path)
    table = read_tables([tmp_path / "out" / "part-0.parquet"])
    params = from_config(tokenize_ehr.EhrParams, {"min_count": 1, "numeric_bins": 2})
    tokenize_ehr.fit_tokenizer(table, tmp_path / "tok", params)
    encoded = tokenize_ehr.encode_rows(table, tmp_path / "tok", params)
    tokenizer, _ = tokenize_ehr.load_ehr_tokenizer(tmp_path / "tok", params)
    words = [tokenizer.id_to_token(i) for i in encoded.column("input_ids")[0].as_py()]
    # CRP values 5, 14, 2, 5.4: edge at the median 5.2; TROP has one value
    assert words == ["[CLS]", "LAB//CRP", "Q0", "<", "LAB//CRP", "Q1", ">", "LAB//TROP", "Q1", "<",
                     "LAB//CRP", "Q0", ">", "LAB//CRP", "Q1", "LAB//CRP"]
