import json
import threading

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import subject_split as split_entry
import task_labels as labels_entry
from mmhealth.core import pseudonym
from mmhealth.split import subject_split, task_labels
from mmhealth.split.assignment import state_text


def test_salt_created_once_and_reused(tmp_path):
    path = tmp_path / "keys" / "salt"
    first = pseudonym.load_or_create_salt(path)
    assert pseudonym.load_or_create_salt(path) == first
    assert len(first) >= 64


def test_parallel_salt_creation_agrees(tmp_path):
    path, keys = tmp_path / "salt", []
    threads = [threading.Thread(target=lambda: keys.append(pseudonym.load_or_create_salt(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1


def test_short_salt_is_refused(tmp_path):
    (tmp_path / "salt").write_text("abc")
    with pytest.raises(ValueError, match="too short"):
        pseudonym.load_or_create_salt(tmp_path / "salt")


def test_subject_pseudonym_is_keyed_stable_and_normalised():
    key_a, key_b = b"a" * 64, b"b" * 64
    assert pseudonym.subject_pseudonym("MRN0001", key_a) == pseudonym.subject_pseudonym(" MRN0001 ", key_a)
    assert pseudonym.subject_pseudonym("MRN0001", key_a) != pseudonym.subject_pseudonym("MRN0001", key_b)
    assert 0 < pseudonym.subject_pseudonym("MRN0001", key_a) < 2**63
    with pytest.raises(ValueError):
        pseudonym.subject_pseudonym("  ", key_a)


def test_record_pseudonym_namespaces_differ():
    key = b"k" * 64
    series = pseudonym.record_pseudonym("1.2.3", key, kind="series")
    assert len(series) == 24 and "1.2.3" not in series
    assert series != pseudonym.record_pseudonym("1.2.3", key, kind="fasta")


@pytest.mark.parametrize("key", [b"k" * 32, b"0123456789abcdef" * 4, b"long key " * 20])  # <, = and > a block
def test_record_pseudonyms_in_bulk_equal_one_by_one(key):
    raw_ids = ["S1|rec1", " S1|rec1 ", "1.2.840.10008.5.1", "Jos\u00e9", "", 42]
    expected = [pseudonym.record_pseudonym(raw, key, kind="fasta") for raw in raw_ids]
    assert pseudonym.record_pseudonyms(raw_ids, key, kind="fasta") == expected
    assert pseudonym.record_pseudonyms(raw_ids[:1], key, kind="series") != expected[:1]


def test_date_shift_is_bounded_and_per_subject():
    key = b"k" * 64
    shifts = {pseudonym.date_shift_days(s, key, 30) for s in range(500)}
    assert max(shifts) <= 365 and min(shifts) >= -365 and len(shifts) > 100
    assert min(abs(d) for d in shifts) >= 30 and min(shifts) < 0 < max(shifts)


def test_split_fractions_and_stability():
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    ids = np.arange(1, 5001, dtype=np.int64) * 7919
    table = subject_split.subject_split(ids, fractions)
    counts = pd.Series(table.column("split").to_pylist()).value_counts(normalize=True)
    assert abs(counts["train"] - 0.6) < 0.03 and abs(counts["test"] - 0.2) < 0.03
    # Adding subjects never moves an existing one.
    bigger = subject_split.subject_split(np.r_[ids, np.arange(1, 100) * 13], fractions).to_pandas()
    merged = table.to_pandas().merge(bigger, on="subject_id")
    assert (merged["split_x"] == merged["split_y"]).all()


def test_split_cli_unions_modalities(tmp_path):
    import pyarrow as pa

    from mmhealth.core.parquet_io import read_metadata, write_table

    write_table(pa.table({"subject_id": pa.array([1, 2, 3], pa.int64())}), tmp_path / "a.parquet", "ingest")
    write_table(pa.table({"subject_id": pa.array([3, 4], pa.int64())}), tmp_path / "b.parquet", "ingest")
    out, fractions = tmp_path / "subjects.parquet", {"train": 0.8, "val": 0.1, "test": 0.1}
    (tmp_path / "shard-0.json").write_text(state_text(fractions, {3: "val"}))  # subject 3 stratified into val
    split_entry.main(["--parts", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"),
                      "--fractions", json.dumps(fractions), "--split-files", str(tmp_path / "shard-0.json"),
                      "--out", str(out)])
    table = pq.read_table(out).to_pylist()
    assert [r["subject_id"] for r in table] == [1, 2, 3, 4]
    assert {r["subject_id"]: r["split"] for r in table}[3] == "val"
    assert all(r["split"] == subject_split.split_of(r["subject_id"], fractions) for r in table if r["subject_id"] != 3)
    assert read_metadata(out)["stage"] == "split"


def test_labels_are_pseudonymised_and_joined(tmp_path):
    key_file = tmp_path / "salt"
    key = pseudonym.load_or_create_salt(key_file)
    (tmp_path / "labels.csv").write_text("subject_id,label\nMRN1,1\nMRN2,0\nMRN9,1\n")
    import pyarrow as pa

    from mmhealth.core.parquet_io import write_table

    ids = [pseudonym.subject_pseudonym(s, key) for s in ("MRN1", "MRN2")]
    write_table(pa.table({"subject_id": pa.array(ids, pa.int64()), "split": ["train", "test"]}),
                tmp_path / "subjects.parquet", "split")
    out = tmp_path / "out.parquet"
    labels_entry.main(["--labels", str(tmp_path / "labels.csv"), "--subjects", str(tmp_path / "subjects.parquet"),
                      "--salt-file", str(key_file), "--modalities", "ehr", "--out", str(out)])
    table = pq.read_table(out).to_pandas()
    assert sorted(table["subject_id"]) == sorted(ids)  # MRN9 was never ingested
    assert "MRN" not in out.read_bytes().decode("latin-1")


def test_label_file_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.csv").write_text("patient,label\nMRN1,1\n")
    with pytest.raises(task_labels.LabelFileError, match="missing column"):
        task_labels.read_label_file(str(tmp_path / "bad.csv"))
    frame = pd.DataFrame({"subject_id": ["MRN1", ""], "label": ["1", "0"]})
    with pytest.raises(task_labels.LabelFileError, match="line 3: empty subject_id"):
        task_labels.pseudonymise_labels(frame, b"k" * 64, ["ehr"], "x.csv")


def test_a_split_with_too_few_subjects_of_a_class_warns_or_fails(tmp_path, caplog):
    import pyarrow as pa

    from mmhealth.core.parquet_io import write_table

    key = b"k" * 32
    raw = [f"P{i}" for i in range(8)]
    (tmp_path / "labels.csv").write_text("subject_id,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(raw)))
    splits = ["train"] * 4 + ["val", "val", "test", "test"]  # val holds P4 (class 0) and P5 (class 1)
    write_table(pa.table({"subject_id": pa.array([pseudonym.subject_pseudonym(r, key) for r in raw], pa.int64()),
                          "split": splits}), tmp_path / "subjects.parquet", "split")
    args = (str(tmp_path / "labels.csv"), str(tmp_path / "subjects.parquet"), key, ["ehr"], str(tmp_path / "o.parquet"))
    task_labels.write_task_labels(*args, min_subjects_per_class=1, on_small_class="fail")  # one each: fine
    with caplog.at_level("WARNING"):
        task_labels.write_task_labels(*args, min_subjects_per_class=2, on_small_class="warn")
    assert "split 'val' has 1 subject(s) of class '0'" in caplog.text and "split 'train'" not in caplog.text
    with pytest.raises(task_labels.LabelFileError, match=r"audit\.min_subjects_per_class: 2"):
        task_labels.write_task_labels(*args, min_subjects_per_class=2, on_small_class="fail")


def test_label_file_from_a_spreadsheet_reads_like_any_csv(tmp_path):
    """'CSV UTF-8' (byte-order mark), CRLF and a blank line: same table, lines named as in the file."""
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbfsubject_id,label\r\nMRN1,1\r\n\r\nMRN2,0\r\n MRN3 ,\r\n")
    frame = task_labels.read_label_file(str(path))
    assert list(frame.columns) == ["subject_id", "label"] and len(frame) == 3
    with pytest.raises(task_labels.LabelFileError, match="line 5: empty label"):
        task_labels.pseudonymise_labels(frame, b"k" * 64, ["ehr"], str(path))
    path.write_bytes(b"subject_id,label\nMRN1,1,extra\n")
    with pytest.raises(task_labels.LabelFileError, match="line 2"):
        task_labels.read_label_file(str(path))
