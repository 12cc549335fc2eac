"""ingest_fasta: windows, base clean-up, quarantine reasons, gzip (good and broken), privacy."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_dicom import plain

from ingest_fasta import main
from mmhealth.core.parquet_io import read_metadata, read_tables
from mmhealth.core.pseudonym import record_pseudonym, subject_pseudonym
from mmhealth.ingest.common import unassigned_shard
from mmhealth.ingest.fasta import ingest_fasta, record_segments, record_starts
from mmhealth.ingest.fasta_windows import windows

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
    params = {"window": 8, "stride": 8, "max_n_fraction": 0.5, "n_policy": "drop", **kwargs}
    manifest = ingest_fasta(tmp_path / "in", KEY, out, shards, REGEX, **params, source_map=tmp_path / "names.tsv")
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
    parts = [out / f"part-{k}.parquet" for k in range(shards)]
    table = read_tables(parts)
    assert manifest["rows_written"] == table.num_rows
    assert read_metadata(parts[-1])["params"] == {"modality": "dna", "shards": shards, "subject_regex": REGEX,
                                                  **params}
    for k, part in enumerate(parts):
        assert all(s % shards == k for s in pq.read_table(part).column("subject_id").to_pylist())
    manifest, quarantine = plain(manifest, pq.read_table(out / "quarantine.parquet").to_pylist(),
                                 tmp_path / "names.tsv", tmp_path / "in")
    return manifest, table.to_pylist(), quarantine


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


def test_n_policies_keep_mask_and_drop(tmp_path):
    # soft-masked (lower-case) bases, an ambiguity code and an N run
    seq = "ACGTacgt" + "NNNNNNRA" + "ACGTACGT"
    write_fasta(tmp_path / "in" / "a.fa", [("S1|r1", seq)])
    got = {}
    for policy in ("drop", "keep", "mask"):
        manifest, rows, _ = run(tmp_path, n_policy=policy)
        got[policy] = [(r["window_index"], r["sequence"], round(r["n_fraction"], 3)) for r in rows]
        record = record_pseudonym("S1|r1", KEY, kind="fasta")
        n_total = {"drop": 7, "keep": 7, "mask": 11}[policy]
        assert manifest["n_fraction_per_record"] == {record: round(n_total / 24, 6)}
        assert manifest["windows_dropped_n_fraction"] == (1 if policy == "drop" else 0)
    assert got["drop"] == [(0, "ACGTACGT", 0.0), (2, "ACGTACGT", 0.0)]  # 7/8 N: dropped
    assert got["keep"] == [(0, "ACGTACGT", 0.0), (1, "NNNNNNNA", 0.875), (2, "ACGTACGT", 0.0)]
    assert got["mask"] == [(0, "ACGTNNNN", 0.5), (1, "NNNNNNNA", 0.875), (2, "ACGTACGT", 0.0)]


def test_all_n_record_is_kept_under_keep_and_refused_under_drop(tmp_path):
    write_fasta(tmp_path / "in" / "a.fa", [("S1|allN", "N" * 16)])
    manifest, rows, _ = run(tmp_path, n_policy="keep")
    assert (manifest["records_out"], len(rows), {r["n_fraction"] for r in rows}) == (1, 2, {1.0})
    manifest, rows, quarantine = run(tmp_path, n_policy="drop")
    assert (manifest["records_out"], rows) == (0, [])
    assert quarantine[0]["reason"] == "no window kept: all 2 windows have an N fraction above 0.5"


def test_bgzip_multi_member_and_crlf_files_read_like_plain(tmp_path):
    records = [(f"S{i}|r{i}", "ACGT" * (5 + i)) for i in range(6)]
    plain = write_fasta(tmp_path / "plain" / "in" / "x.fa", records).read_bytes()
    halves = plain.split(b">S3")
    members = gzip.compress(halves[0], mtime=0) + gzip.compress(b">S3" + halves[1], mtime=0) + b"\x00" * 8
    (tmp_path / "bgz" / "in").mkdir(parents=True)
    (tmp_path / "bgz" / "in" / "x.fa.gz").write_bytes(members)
    (tmp_path / "crlf" / "in").mkdir(parents=True)
    (tmp_path / "crlf" / "in" / "x.fa").write_bytes(plain.replace(b"\n", b"\r\n"))
    _, expected, _ = run(tmp_path / "plain")
    for variant in ("bgz", "crlf"):
        manifest, rows, quarantine = run(tmp_path / variant)
        assert (rows, quarantine, manifest["records_out"]) == (expected, [], 6), variant


def test_manifest_checksums_are_of_the_file_bytes(tmp_path):
    path = write_fasta(tmp_path / "in" / "x.fa.gz", [("S1|r", "ACGT" * 4)], compress=True)
    manifest, _, _ = run(tmp_path)
    assert manifest["inputs"] == {"x.fa.gz": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_regex_without_subject_group_is_refused(tmp_path):
    write_fasta(tmp_path / "in" / "a.fa", [("S1|r", "ACGT")])
    with pytest.raises(ValueError, match="named group"):
        ingest_fasta(tmp_path / "in", KEY, tmp_path / "out", 1, r"^([^|]+)")


def test_cli_writes_one_shard_without_raw_ids(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_fasta(tmp_path / "in" / "a.fa", [("MRN7654321|secret-record", "ACGT" * 70), ("MRN7654321", "ACGT")])
    (tmp_path / "salt").write_text("s" * 64)
    shard = subject_pseudonym("MRN7654321", b"s" * 64) % 3
    out = tmp_path / "out"
    main(["--input", str(tmp_path / "in"), "--files", str(tmp_path / "in" / "a.fa"), "--shard", str(shard),
          "--shards", "3", "--salt-file", str(tmp_path / "salt"), "--out-part", str(out / "part.parquet"),
          "--quarantine", str(out / "q.parquet"), "--manifest", str(out / "m.json"),
          "--subject-regex", REGEX, "--window", "64", "--stride", "32", "--max-n-fraction", "0.1",
          "--n-policy", "keep"])
    manifest = json.loads((out / "m.json").read_text())
    assert (manifest["records_out"], manifest["rows_written"], manifest["shard"]) == (1, 8, shard)
    # the header without '|' has no subject: counted by the one job that owns the file's path
    assert manifest["records_quarantined"] == (1 if unassigned_shard("a.fa", 3) == shard else 0)
    assert read_metadata(out / "part.parquet")["params"]["n_policy"] == "keep"
    texts = [caplog.text]
    for path in out.iterdir():
        texts.append(path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":
            texts.append(str(pq.read_table(path).to_pylist()))
    assert not any("7654321" in text or "secret-record" in text for text in texts)


def test_segments_cut_only_at_record_starts_whatever_the_read_size(monkeypatch):
    text = b"\n\n>S1|a x>y\nAC>GT\nAC\n>S2|b\n\n>S3|c\r\nAC\r\n>\n>S4|d\nA"
    records = [b">S1|a x>y\nAC>GT\nAC\n", b">S2|b\n\n", b">S3|c\r\nAC\r\n", b">\n", b">S4|d\nA"]
    for read_bytes in [*range(1, 12), 1 << 22]:
        monkeypatch.setattr("mmhealth.ingest.fasta.READ_BYTES", read_bytes)
        segments = list(record_segments(io.BytesIO(text)))
        assert b"".join(segments) == text
        assert all(s.startswith(b">") for s in segments[1:])  # the first holds the text before any record
        found = []
        for segment in segments:
            starts = record_starts(segment)
            found += [segment[a:b] for a, b in zip(starts, [*starts[1:], len(segment)][:len(starts)], strict=True)]
        assert found == records, read_bytes  # a '>' inside a line starts nothing
    assert list(record_segments(io.BytesIO(b""))) == []


def test_a_file_of_blank_lines_has_no_records_and_blank_lines_before_the_first_are_fine(tmp_path, monkeypatch):
    monkeypatch.setattr("mmhealth.ingest.fasta.READ_BYTES", 4)  # the blank lines come as a segment of their own
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blank.fa").write_bytes(b"\n \n\r\n")
    (tmp_path / "in" / "lead.fa").write_bytes(b"\n\n\n\n>S1|r1\nACGTACGT\n")
    manifest, rows, quarantine = run(tmp_path)
    assert [(q["source"], q["reason"]) for q in quarantine] == [("blank.fa", "no FASTA records in file")]
    assert len(rows) == 1 and manifest["records_out"] == 1


def test_records_of_many_files_are_windowed_together_and_a_broken_file_leaves_none(tmp_path):
    for number in range(5):
        write_fasta(tmp_path / "in" / f"f{number}.fa", [(f"S{number}|r{number}", "ACGTACGTAC" * 3)])
    good = write_fasta(tmp_path / "in" / "f2.fa.gz", [("S9|r9", "ACGTACGT" * 4), ("S9|r10", "ACGT" * 8)],
                       compress=True)
    good.write_bytes(good.read_bytes()[:-12])  # cut inside the gzip trailer: the file breaks at its end
    manifest, rows, quarantine = run(tmp_path)
    assert sorted({r["subject_id"] for r in rows}) == sorted(subject_pseudonym(f"S{n}", KEY) for n in range(5))
    assert len(rows) == 5 * 4 and manifest["records_out"] == 5  # 30 bases: 3 windows of 8, then 6 >= 8 / 2
    assert [(q["source"], q["locator"], q["reason"][:42]) for q in quarantine] == [
        ("f2.fa.gz", "file", "unreadable file, broke after record 1: EOF")]  # the 2nd never ended
    assert manifest["records_quarantined"] == 1 and manifest["records_in"] == 6


def test_records_and_bases_agree_with_biopython_on_messy_files(tmp_path):
    """Our block reader against Bio.SeqIO on CRLF, blank lines, lower case, ambiguity codes, spaces inside
    sequence lines, descriptions and gzip: every record one window (window > longest, 2 x shortest)."""
    from Bio import SeqIO

    rng = random.Random(7)
    (tmp_path / "in").mkdir()
    for number in range(4):
        lines = []
        for record in range(30):
            seq = "".join(rng.choice("ACGTacgtNRYKM") for _ in range(rng.randint(600, 1000)))
            width = rng.choice([60, 61, 80, 1000])
            lines.append(f">S{number}|r{record} sample {number} > desc")
            lines += [seq[i:i + width] if i % 3 else " " + seq[i:i + width] for i in range(0, len(seq), width)]
            lines += [""] * rng.choice([0, 0, 1, 2])
        text = ("\r\n" if number % 2 else "\n").join(lines) + "\n"
        name = f"f{number}.fa" + (".gz" if number == 3 else "")
        (tmp_path / "in" / name).write_bytes(gzip.compress(text.encode()) if number == 3 else text.encode())
    _, rows, quarantine = run(tmp_path, window=1000, stride=1000, n_policy="keep")
    assert quarantine == []
    ours = {r["record_id"]: r["sequence"] for r in rows}
    expected = {}
    for path in sorted((tmp_path / "in").iterdir()):
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as handle:
            for record in SeqIO.parse(handle, "fasta"):
                bases = str(record.seq).upper().translate(str.maketrans("RYKM", "NNNN"))
                expected[record_pseudonym(record.id, KEY, kind="fasta")] = bases
    assert len(expected) == 120 and ours == expected
