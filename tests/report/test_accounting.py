"""Data accounting: counts and reasons from the stage files, raw ids of unused labels for the console only."""

from __future__ import annotations

import json

import pyarrow as pa

from mmhealth.core.parquet_io import write_table
from mmhealth.core.pseudonym import subject_pseudonym
from mmhealth.report.accounting import console_summary, data_accounting
from mmhealth.report.data_section import data_section
from mmhealth.report.end_of_run import unused_label_ids

KEY = b"k" * 32


def test_counts_reasons_and_unused_labels(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"records_in": 10, "records_out": 7,
                                                        "records_quarantined": 3}))
    write_table(pa.table({"source": ["a", "b", "c"], "locator": ["", "", ""],
                          "reason": ["not DICOM", "not DICOM", "duplicate slice"]}), tmp_path / "q.parquet", "ingest")
    subjects = [subject_pseudonym(r, KEY) for r in ("P1", "P2", "P3", "P4")]
    write_table(pa.table({"subject_id": pa.array(subjects, pa.int64()), "split": ["train", "train", "val", "test"]}),
                tmp_path / "subjects.parquet", "split")
    write_table(pa.table({"subject_id": pa.array(subjects, pa.int64()), "record_id": pa.nulls(4, pa.string()),
                          "label": ["0", "1", "1", "0"], "split": ["train", "train", "val", "test"]}),
                tmp_path / "labels.parquet", "task_labels", {"labels_in": 6, "unmatched": 2})
    accounting = data_accounting({"image": tmp_path / "manifest.json"}, {"image": tmp_path / "q.parquet"},
                                 tmp_path / "subjects.parquet", {"t": tmp_path / "labels.parquet"})
    image = accounting["modalities"]["image"]
    assert image["quarantined_fraction"] == 0.3
    assert image["top_reasons"] == [{"reason": "not DICOM", "count": 2}, {"reason": "duplicate slice", "count": 1}]
    assert accounting["subjects"] == {"train": 2, "val": 1, "test": 1}
    task = accounting["tasks"]["t"]
    assert task["splits"]["train"] == {"units": 2, "classes": {"0": 1, "1": 1}} and task["labels_unused"] == 2

    (tmp_path / "labels.csv").write_text("subject_id,label\nP1,0\n P2 ,1\nX9,1\nX8,0\n")
    unused = unused_label_ids(tmp_path / "labels.csv", tmp_path / "subjects.parquet", KEY)
    assert unused == ["X8", "X9"]  # ' P2 ' is P2: ids are compared stripped, as in every modality
    text = console_summary(accounting, {"t": unused})
    assert "image: 10 in, 7 out, 3 quarantined (30.0%)" in text and "2 x not DICOM" in text
    assert "X8, X9" in text and "X8" not in json.dumps(accounting)
    section = data_section(accounting, ["t"])
    assert "3 (30.0%)" in section and "2 × not DICOM" in section and "Subjects per split: train 2, val 1, test 1" in section
    assert "0: 1 (50%), 1: 1 (50%)" in section and "2 of 6 labels name a subject with no data" in section
    assert "X8" not in section


def test_after_a_failure_the_summary_ignores_an_earlier_runs_accounting(tmp_path):
    """The failed jobs' cleanup removed the tables an old accounting.json points at: say only what exists."""
    import json

    from mmhealth.report.end_of_run import end_of_run_summary

    stale = {"modalities": {"image": {"records_in": 99, "records_out": 90, "records_quarantined": 9,
                                      "quarantined_fraction": 9 / 99, "quarantine": "gone.parquet",
                                      "top_reasons": [{"count": 9, "reason": "stale reason"}]}},
             "tasks": {}}
    (tmp_path / "accounting.json").write_text(json.dumps(stale))
    config = {"privacy": {"salt_file": str(tmp_path / "no-salt")}, "tasks": {}}
    assert "stale reason" in end_of_run_summary(config, tmp_path, ["image"], [], failed=False)
    assert "stale reason" not in end_of_run_summary(config, tmp_path, ["image"], [], failed=True)
