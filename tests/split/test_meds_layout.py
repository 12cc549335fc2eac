"""meds_layout: MEDS 0.4 validation of EHR events (the `meds` package's schemas) and the MEDS folder."""

from __future__ import annotations

import datetime as dt
import json

import meds
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from meds_layout import main
from mmhealth.core.meds import MedsValidationError, validate_meds_events
from mmhealth.core.parquet_io import write_table
from mmhealth.ingest.ehr import MEDS_SCHEMA, ingest_ehr

KEY = b"m" * 64


def events(rows: list[tuple]) -> pa.Table:
    names = MEDS_SCHEMA.names[:len(rows[0])] if rows else MEDS_SCHEMA.names  # extension columns may be left out
    return pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows], schema=MEDS_SCHEMA)


def test_ingested_events_are_valid_meds_and_align_text_to_large_string():
    t0 = dt.datetime(2020, 1, 1)
    table = events([(1, None, "SEX//F", None, None), (1, t0, "NOTE", None, "seen"), (2, t0, "LAB//X", 1.5, None)])
    aligned = validate_meds_events(table)
    assert aligned.schema.field("text_value").type == pa.large_string()
    meds.DataSchema.validate(aligned)
    assert aligned.column("code").to_pylist() == table.column("code").to_pylist()


@pytest.mark.parametrize(("rows", "message"), [
    ([(1, dt.datetime(2020, 1, 2), "A", None, None), (1, dt.datetime(2020, 1, 1), "B", None, None)],
     r"events of a subject are not sorted by time \(row 1; static events must come first\)"),
    ([(1, dt.datetime(2020, 1, 2), "A", None, None), (1, None, "B", None, None)],
     r"not sorted by time \(row 1"),
    ([(1, None, "A", None, None), (2, None, "B", None, None), (1, None, "C", None, None)],
     "a subject's events are not contiguous"),
    ([(1, None, None, None, None)], r"not MEDS 0\.4\.1 data: .*code"),
], ids=["time_order", "static_after_timed", "not_contiguous", "null_code"])
def test_invalid_meds_is_refused(rows, message):
    with pytest.raises(MedsValidationError, match=message):
        validate_meds_events(events(rows))


def test_wrong_column_type_is_refused():
    table = pa.table({"subject_id": ["1"], "time": pa.array([None], pa.timestamp("us")), "code": ["A"]})
    with pytest.raises(MedsValidationError, match=r"not MEDS 0\.4\.1 data: .*subject_id"):
        validate_meds_events(table)


def test_layout_writes_a_valid_meds_folder(tmp_path):
    (tmp_path / "labs.csv").write_text("pid,t,test,v\nA,2020-01-01,GLU,5\nA,2020-01-02,HB,7\nB,2020-01-01,GLU,6\n"
                                       "C,2020-01-01,GLU,4\n")
    ingest_ehr([{"path": str(tmp_path / "labs.csv"), "subject_id": "pid", "time": "t",
                 "events": [{"code": "LAB//{test}", "numeric_value": "v"}]}], KEY, tmp_path / "ehr", 2)
    parts = [tmp_path / "ehr" / f"part-{k}.parquet" for k in range(2)]
    subjects = pq.read_table(parts[0]).column("subject_id").to_pylist() + \
        pq.read_table(parts[1]).column("subject_id").to_pylist()
    a_b_c = sorted(set(subjects))
    splits = dict(zip(a_b_c, ["train", "val", "test"], strict=True))
    write_table(pa.table({"subject_id": pa.array([*a_b_c, 999], pa.int64()),
                          "split": [*splits.values(), "train"]}), tmp_path / "subjects.parquet", "split")
    main(["--parts", *map(str, parts), "--subjects", str(tmp_path / "subjects.parquet"),
          "--out-dir", str(tmp_path / "meds")])
    out = tmp_path / "meds"
    data = sorted((out / "data").iterdir())
    assert [p.name for p in data] == ["part-0.parquet", "part-1.parquet"]
    assert not any(p.is_symlink() for p in data)
    for path in data:
        meds.DataSchema.validate(pq.read_table(path))
    assert sum(pq.read_table(p).num_rows for p in data) == 4
    codes = pq.read_table(out / "metadata" / "codes.parquet")
    meds.CodeMetadataSchema.validate(codes)
    assert codes.select(["code", "n_events", "n_subjects"]).to_pylist() == [
        {"code": "LAB//GLU", "n_events": 3, "n_subjects": 3}, {"code": "LAB//HB", "n_events": 1, "n_subjects": 1}]
    splits_table = pq.read_table(out / "metadata" / "subject_splits.parquet")
    meds.SubjectSplitSchema.validate(splits_table)
    got = dict(zip(splits_table.column("subject_id").to_pylist(), splits_table.column("split").to_pylist(),
                   strict=True))
    assert got == {s: {"train": "train", "val": "tuning", "test": "held_out"}[name] for s, name in splits.items()}
    metadata = json.loads((out / "metadata" / "dataset.json").read_text())
    meds.DatasetMetadataSchema.validate(metadata)
    assert (metadata["meds_version"], metadata["etl_name"]) == ("0.4.1", "mmhealth")


def test_layout_refuses_subjects_without_a_split(tmp_path):
    write_table(events([(5, None, "A", None, None)]), tmp_path / "part-0.parquet", "ingest")
    write_table(pa.table({"subject_id": pa.array([6], pa.int64()), "split": ["train"]}),
                tmp_path / "subjects.parquet", "split")
    with pytest.raises(ValueError, match="1 subjects of the MEDS data have no split in the subjects file"):
        main(["--parts", str(tmp_path / "part-0.parquet"), "--subjects", str(tmp_path / "subjects.parquet"),
              "--out-dir", str(tmp_path / "meds")])
