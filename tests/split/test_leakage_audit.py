"""leakage_audit: a subject, a record, identical pixel data or an identical sequence in two splits is a leak."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from leakage_audit import main
from mmhealth.core.parquet_io import write_table
from mmhealth.split.leakage_audit import LeakageError

SPLITS = {1: "train", 2: "train", 3: "val", 4: "test"}


def write_inputs(root: Path, splits: dict[int, str], series: list[tuple[int, str, float]],
                 records: list[tuple[int, str, str]]) -> list[str]:
    """subjects.parquet, one image part ((subject, record, pixel value) per 2-slice series) and one dna part
    ((subject, record, bases) cut into 4-base windows); return the CLI arguments for them."""
    write_table(pa.table({"subject_id": pa.array(list(splits), pa.int64()), "split": list(splits.values())}),
                root / "subjects.parquet", "split")
    image = {"subject_id": [], "record_id": [], "slice_index": [], "hu": []}
    for subject, record, value in series:
        for index in (1, 0):  # written out of order: the audit must sort slices itself
            image["subject_id"].append(subject)
            image["record_id"].append(record)
            image["slice_index"].append(index)
            image["hu"].append(np.full(4, value + index, dtype=np.float32).tolist())
    write_table(pa.table({"subject_id": pa.array(image["subject_id"], pa.int64()), "record_id": image["record_id"],
                          "slice_index": pa.array(image["slice_index"], pa.int32()),
                          "hu": pa.array(image["hu"], pa.list_(pa.float32()))}), root / "image.parquet", "ingest")
    dna = {"subject_id": [], "record_id": [], "window_index": [], "sequence": []}
    for subject, record, bases in records:
        for index in range(len(bases) // 4):
            dna["subject_id"].append(subject)
            dna["record_id"].append(record)
            dna["window_index"].append(index)
            dna["sequence"].append(bases[4 * index:4 * index + 4])
    write_table(pa.table({"subject_id": pa.array(dna["subject_id"], pa.int64()), "record_id": dna["record_id"],
                          "window_index": pa.array(dna["window_index"], pa.int32()), "sequence": dna["sequence"]}),
                root / "dna.parquet", "ingest")
    return ["--subjects", str(root / "subjects.parquet"), "--image-parts", str(root / "image.parquet"),
            "--dna-parts", str(root / "dna.parquet"), "--out", str(root / "audit.json")]


CLEAN_SERIES = [(1, "s1", 10.0), (2, "s2", 10.0), (3, "s3", 30.0), (4, "s4", 40.0)]  # s1 = s2: same split
CLEAN_RECORDS = [(1, "r1", "ACGTACGT"), (3, "r3", "TTTTACGT"), (4, "r4", "GGGGCCCC")]


def test_clean_split_passes_and_reports_counts(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    main(write_inputs(tmp_path, SPLITS, CLEAN_SERIES, CLEAN_RECORDS))
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["leak"] is False and report["on_leak"] == "fail"
    assert (report["subjects"]["n"], report["records"]["n"], report["pixel_data"]["series"],
            report["sequences"]["records"]) == (4, 7, 4, 3)
    assert report["pixel_data"]["n"] == 3  # s1 and s2 share pixels, within one split: not a leak
    assert "no subject, record, pixel data or sequence in more than one split" in caplog.text


@pytest.mark.parametrize(("splits", "series", "records", "check", "subjects", "record_ids"), [
    ({**SPLITS, 5: "train"}, CLEAN_SERIES, CLEAN_RECORDS, "subjects", [5], None),
    (SPLITS, [*CLEAN_SERIES, (3, "s1", 99.0)], CLEAN_RECORDS, "records", [1, 3], ["s1"]),
    (SPLITS, [*CLEAN_SERIES, (4, "s5", 10.0)], CLEAN_RECORDS, "pixel_data", [1, 2, 4], ["s1", "s2", "s5"]),
    (SPLITS, CLEAN_SERIES, [*CLEAN_RECORDS, (3, "r9", "ACGTACGT")], "sequences", [1, 3], ["r1", "r9"]),
], ids=["subject_in_two_splits", "record_in_two_splits", "identical_pixels", "identical_sequence"])
def test_each_kind_of_leak_fails_and_names_the_offenders(tmp_path, splits, series, records, check, subjects,
                                                         record_ids):
    args = write_inputs(tmp_path, splits, series, records)
    if check == "subjects":  # the subject listed twice, in two splits
        write_table(pa.table({"subject_id": pa.array([*splits, 5], pa.int64()),
                              "split": [*splits.values(), "test"]}), tmp_path / "subjects.parquet", "split")
    with pytest.raises(LeakageError, match=r"leakage across splits: 1 .* in more than one split; the full "
                       r"report is in ") as error:
        main(args)
    assert error.value.code != 0
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["leak"] is True and report[check]["in_several_splits"] == 1
    assert report[check]["offending_subject_ids"] == subjects
    if record_ids is not None:
        assert report[check]["offending_record_ids"] == record_ids
    others = {"subjects", "records", "pixel_data", "sequences"} - {check}
    assert all(report[name]["in_several_splits"] == 0 for name in others)


def test_warn_mode_writes_the_report_and_exits_cleanly(tmp_path, caplog):
    args = write_inputs(tmp_path, SPLITS, CLEAN_SERIES, [*CLEAN_RECORDS, (4, "r9", "ACGTACGT")])
    main([*args, "--on-leak", "warn"])
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["leak"] is True and report["on_leak"] == "warn"
    assert "leakage across splits: 1 identical sequence groups in more than one split" in caplog.text


def test_failed_audit_keeps_its_findings_where_snakemake_does_not_delete_them(tmp_path, caplog):
    """Snakemake deletes a failed job's outputs (audit.json); the report survives in --failed-out and the log."""
    caplog.set_level(logging.INFO)
    args = write_inputs(tmp_path, SPLITS, [*CLEAN_SERIES, (3, "s1", 99.0)], CLEAN_RECORDS)
    failed = tmp_path / "audit.failed.json"
    with pytest.raises(LeakageError, match=rf"the full report is in {failed}") as error:
        main([*args, "--failed-out", str(failed)])
    assert error.value.code != 0
    (tmp_path / "audit.json").unlink()  # what Snakemake does with the failed job's output
    report = json.loads(failed.read_text())
    assert report["leak"] is True and report["records"]["offending_subject_ids"] == [1, 3]
    assert report["records"]["offending_record_ids"] == ["s1"]
    assert "leak: records: record id under subjects of several splits: subject_ids [1, 3]; record_ids ['s1']" \
        in caplog.text
    main([*write_inputs(tmp_path, SPLITS, CLEAN_SERIES, CLEAN_RECORDS), "--failed-out", str(failed)])
    assert not failed.exists()  # a passing audit leaves no stale failure behind
