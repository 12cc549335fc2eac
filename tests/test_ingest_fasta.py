"""ingest_fasta: windows, base clean-up, quarantine reasons, gzip (good and broken), privacy."""

from __future__ import annotations

import gzip
import json
import logging
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingest_fasta import ingest_fasta, main, windows
from parquet_io import read_metadata, read_tables
from pseudonym import record_pseudonym, subject_pseudonym

KEY = b"f" * 64
REGEX = r"^(?P<subject_id>[^|]+)\|"


def write_fasta(path: Path, records: list[tuple[str, str]], compress: bool = False) -> Path:
    """FASTA text with 60-column sequence lines; gzip-compressed when asked."""
    text = "".join(f">{header}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
                   for header, seq in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def run(tmp_path: Path, shards: int = 2, **kwargs) -> tuple[dict, list[dict], list[dict]]:
    """Ingest tmp_path/in; check the output contract; return manifest, window rows, quarantine rows."""
    out = tmp_path / "out"
    params = {"window": 8, "stride": 8, "max_n_fraction": 0.5, **kwargs}
    manifest = ingest_fasta(tmp_path / "in", KEY, out, shards, REGEX, **params)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
    parts = [out / f"part-{k}.parquet" for k in range(shards)]
    table = read_tables(parts)
    assert manifest["rows_written"] == table.num_rows
    assert read_metadata(parts[-1])["params"] == {"modality": "dna", "shards": shards, "subject_regex": REGEX,
                                                  **params}
    for k, part in enumerate(parts):
        assert all(s % shards == k for s in pq.read_table(part).column("subject_id").to_pylist())
    return manifest, table.to_pylist(), pq.read_table(out / "quarantine.parquet").to_pylist()


def test_windows_keep_last_partial_window_of_at_least_half():
    assert [(i, o, len(b)) for i, o, b in windows("A" * 20, 8, 8)] == [(0, 0, 8), (1, 8, 8), (2, 16, 4)]
    assert [(i, o, len(b)) for i, o, b in windows("A" * 19, 8, 8)] == [(0, 0, 8), (1, 8, 8)]
    assert [(i, o, len(b)) for i, o, b in windows("A" * 14, 8, 4)] == [(0, 0, 8), (1, 4, 8), (2, 8, 6)]
    assert list(windows("ACG", 8, 8)) == []
    assert list(windows("ACGT", 8, 8)) == [(0, 0, "ACGT")]


def test_records_become_clean_windows(tmp_path):
    write_fasta(tmp_path / "in" / "a.fa", [("MRN0001|rec1 some description", "acgtRYKMacgtACGTAC"),
                                           ("MRN0002|rec2", "ACGUACGU")])
    manifest, rows, quarantine = run(tmp_path)
    assert (manifest["records_in"], manifest["records_out"], quarantine) == (2, 2, [])
    by_record = {}
    for row in rows:
        by_record.setdefault(row["record_id"], []).append(row)
    first = by_record[record_pseudonym("MRN0001|rec1", KEY, kind="fasta")]
    # upper-cased, ambiguity codes as N, and the trailing 'AC' is shorter than half a window
    assert [(r["window_index"], r["offset"], r["sequence"]) for r in first] == [(0, 0, "ACGTNNNN"),
                                                                               (1, 8, "ACGTACGT")]
    assert first[0]["n_fraction"] == pytest.approx(0.5)
    assert first[0]["subject_id"] == subject_pseudonym("MRN0001", KEY)
    second = by_record[record_pseudonym("MRN0002|rec2", KEY, kind="fasta")]
    assert [r["sequence"] for r in second] == ["ACGTACGT"]  # RNA U read as T


def test_n_rich_windows_are_dropped_and_counted(tmp_path):
    write_fasta(tmp_path / "in" / "a.fa", [("S1|r1", "ACGTACGT" + "NNNNNNAC" + "NNNNACGT" + "ACGTNNNNN")])
    manifest, rows, _ = run(tmp_path, max_n_fraction=0.5)
    assert [r["offset"] for r in rows] == [0, 16, 24]  # 6/8 N dropped; 4/8 N kept (not above the limit)
    assert [r["window_index"] for r in rows] == [0, 2, 3]  # numbering keeps the dropped window's place
    assert manifest["windows_dropped_n_fraction"] == 1


def test_gzip_and_plain_inputs_give_the_same_windows(tmp_path):
    random.seed(1)
    seq = "".join(random.choice("ACGT") for _ in range(100))
    write_fasta(tmp_path / "plain" / "in" / "x.fasta", [("S9|r1", seq)])
    write_fasta(tmp_path / "gz" / "in" / "deep" / "x.FNA.gz", [("S9|r1", seq)], compress=True)
    (tmp_path / "gz" / "in" / "deep" / "readme.txt").write_text("not a FASTA name: ignored")
    _, plain, _ = run(tmp_path / "plain")
    manifest, packed, _ = run(tmp_path / "gz")
    assert plain == packed and len(plain) == 13
    assert list(manifest["inputs"]) == ["deep/x.FNA.gz"]


def test_bad_records_are_quarantined_with_their_reason(tmp_path):
    write_fasta(tmp_path / "in" / "a.fa", [
        ("S1|ok", "ACGTACGTACGT"),
        ("no_pipe_here", "ACGTACGT"),
        ("|empty_subject", "ACGTACGT"),
        ("S1|empty", ""),
        ("S1|bad", "ACGTXACG*T"),
        ("S1|ok", "ACGTACGT"),
        ("S1|short", "ACG"),
        ("S1|allN", "NNNNNNNNACNNNNNN"),
        ("S1|gap", "ACGT-ACGT"),
    ])
    write_fasta(tmp_path / "in" / "b.fa", [("S1|ok", "ACGTACGT"), ("S2|fine", "ACGTACGT")])
    (tmp_path / "in" / "empty.fa").write_text("")
    manifest, rows, quarantine = run(tmp_path)
    got = {(q["source"], q["locator"]): q["reason"] for q in quarantine}
    assert got == {
        ("a.fa", "record 2"): "header does not match the subject regex",
        ("a.fa", "record 3"): "header does not match the subject regex",
        ("a.fa", "record 4"): "empty sequence",
        ("a.fa", "record 5"): "non-IUPAC characters '*', 'X' (first at position 5)",
        ("a.fa", "record 6"): "duplicate record id (first seen in a.fa record 1)",
        ("a.fa", "record 7"): "3 bases, shorter than half a window (8)",
        ("a.fa", "record 8"): "no window kept: all 2 windows have an N fraction above 0.5",
        ("a.fa", "record 9"): "non-IUPAC characters '-' (first at position 5)",
        ("b.fa", "record 1"): "duplicate record id (first seen in a.fa record 1)",
        ("empty.fa", "file"): "no FASTA records in file",
    }
    assert (manifest["records_in"], manifest["records_out"], manifest["records_quarantined"]) == (11, 2, 9)
    assert [(r["offset"], r["sequence"]) for r in rows] == [(0, "ACGTACGT"), (8, "ACGT"), (0, "ACGTACGT")]
    assert manifest["windows_dropped_n_fraction"] == 2


def test_broken_gzip_refuses_the_file_and_counts_records_read(tmp_path):
    random.seed(2)
    records = [(f"S{i}|r{i}", "".join(random.choice("ACGT") for _ in range(3000))) for i in range(4)]
    good = write_fasta(tmp_path / "tmp" / "x.fa.gz", records, compress=True).read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.fa.gz").write_bytes(good[: len(good) * 2 // 3])  # ends mid-stream
    (tmp_path / "in" / "garbage.fa.gz").write_bytes(b"this is not gzip at all")
    write_fasta(tmp_path / "in" / "lead.fa", [("S9|r9", "ACGT")])
    lead = tmp_path / "in" / "lead.fa"
    lead.write_text("junk before the first header\n" + lead.read_text())
    manifest, rows, quarantine = run(tmp_path)
    got = {q["source"]: (q["locator"], q["reason"]) for q in quarantine}
    locator, reason = got["cut.fa.gz"]
    assert locator == "file"
    assert reason.startswith("unreadable file, broke after record 2: EOFError: Compressed file ended")
    assert got["garbage.fa.gz"] == ("file", "unreadable file, broke before the first record: BadGzipFile: "
                                            "Not a gzipped file (b'th')")
    assert got["lead.fa"][1].startswith("unreadable file, broke before the first record: ValueError: ")
    assert rows == []
    assert (manifest["records_in"], manifest["records_out"], manifest["records_quarantined"]) == (2, 0, 2)


def test_regex_without_subject_group_is_refused(tmp_path):
    write_fasta(tmp_path / "in" / "a.fa", [("S1|r", "ACGT")])
    with pytest.raises(ValueError, match="named group"):
        ingest_fasta(tmp_path / "in", KEY, tmp_path / "out", 1, r"^([^|]+)")


def test_cli_writes_outputs_without_raw_ids(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_fasta(tmp_path / "in" / "a.fa", [("MRN7654321|secret-record", "ACGT" * 70), ("MRN7654321", "ACGT")])
    main(["--input", str(tmp_path / "in"), "--salt-file", str(tmp_path / "salt"), "--out-dir",
          str(tmp_path / "out"), "--shards", "3", "--subject-regex", REGEX, "--window", "64",
          "--stride", "32", "--max-n-fraction", "0.1"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["records_out"], manifest["records_quarantined"], manifest["rows_written"]) == (1, 1, 8)
    texts = [caplog.text]
    for path in (tmp_path / "out").iterdir():
        texts.append(path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":
            texts.append(str(pq.read_table(path).to_pylist()))
    assert not any("7654321" in text or "secret-record" in text for text in texts)
    assert "ingest dna: records_in=2 records_out=1 records_quarantined=1 rows_written=8" in caplog.text
