"""Which raw files feed which ingest shard, worked out while Snakemake builds the DAG.

A subject's shard is a function of its pseudonym, so a new patient's files must reach exactly one ingest
job per modality. This module reads just enough of each raw file to know its subjects (DICOM PatientID,
FASTA record ids) and cuts the EHR tables into one CSV per shard; a cache keyed by size and mtime means
only new or changed files are read again, and a staged CSV is rewritten only when its rows change, so an
unchanged shard keeps its inputs untouched and its job does not re-run.

Everything here holds raw identifiers and lives in the staging folder, never under results/.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mmhealth.core.pseudonym import (
    load_or_create_salt,
    normalise_raw_id,
    shard_of,
    subject_pseudonym,
    unassigned_shard,
)
from mmhealth.ingest import ehr_csv

INDEX_VERSION = 2  # 2: tables read by ehr_csv (byte-order mark, encoding, ragged rows), __line__ first
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")
LINE_COLUMN = ehr_csv.LINE_COLUMN


@dataclass
class RawIndex:
    """Per modality and shard, the raw (or staged) files a shard's ingest job reads."""

    shards: int
    dicom: dict[int, list[str]] = field(default_factory=dict)
    fasta: dict[int, list[str]] = field(default_factory=dict)
    ehr: dict[int, list[str]] = field(default_factory=dict)  # staged CSVs, in config table order


def _fingerprint(key: bytes, shards: int, regex: str) -> str:
    return hashlib.sha256(key + f"|{shards}|{regex}|{INDEX_VERSION}".encode()).hexdigest()


def _stat(path: str) -> list[int]:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def _walk(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if not f.startswith("."))


def dicom_file_shards(path: str, root: str, key: bytes, shards: int) -> list[int]:
    """The shard of the file's PatientID, or the unassigned shard of unreadable and anonymous files."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        patient = str(ds.get("PatientID", "") or "").strip()
    except Exception:  # not DICOM, truncated, DICOMDIR...: the ingest job names the reason
        patient = ""
    if patient:
        return [shard_of(subject_pseudonym(patient, key), shards)]
    return [unassigned_shard(os.path.relpath(path, root), shards)]


def fasta_file_shards(path: str, root: str, key: bytes, shards: int, regex: re.Pattern) -> list[int]:
    """Shards of every record's subject, plus the unassigned shard when a record has none or reading fails."""
    found, orphan = set(), False
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", errors="replace") as handle:
            for line in handle:
                if line.startswith(">"):
                    record_id = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
                    match = regex.search(record_id)
                    subject = match.group("subject_id").strip() if match else ""
                    if subject:
                        found.add(shard_of(subject_pseudonym(subject, key), shards))
                    else:
                        orphan = True
    except (OSError, EOFError, UnicodeError):
        orphan = True
    if orphan or not found:
        found.add(unassigned_shard(os.path.relpath(path, root), shards))
    return sorted(found)


def write_if_changed(path: Path, text: str) -> None:
    """Leave an identical file untouched, so Snakemake sees no new input."""
    if path.exists() and path.read_text(encoding="utf-8", errors="surrogateescape") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, path)


def _subject_shard(cell: str, key: bytes, shards: int) -> int:
    """Shard of a row's raw subject id; 0 (whose job quarantines the row) when it is empty or undecodable."""
    subject = normalise_raw_id(cell)
    if not subject or ehr_csv.NOT_DECODED.search(subject):
        return 0
    return shard_of(subject_pseudonym(subject, key), shards)


def stage_ehr_table(path: str, subject_column: str, key: bytes, shards: int, out_dir: Path,
                    encoding: str) -> list[Path]:
    """One UTF-8 CSV per shard: `__line__` (the row's line in the original file), then the row's cells as
    read by `ehr_csv.read_csv` (ragged rows and undecodable bytes kept, for the shard job to quarantine).

    Rows without a usable subject id go to shard 0, whose job quarantines them; a table without the subject
    column goes whole to shard 0, whose job stops with an error naming the file and column. A file the
    reader refuses (unknown encoding, a quote never closed, UTF-16) is copied whole to every shard, whose
    jobs stop with the reader's error: the index itself never fails on a table's content.
    """
    buffers: list[list[list[str]]] = [[] for _ in range(shards)]
    try:
        header, rows = ehr_csv.read_csv(path, encoding, as_read=True)
        column = header.index(subject_column) if subject_column in header else None
        for row in rows:
            cell = row.cells[column] if column is not None and column < len(row.cells) else ""
            buffers[_subject_shard(cell, key, shards)].append([str(row.line), *row.cells])
    except ehr_csv.CsvFileError:
        original = Path(path).read_bytes()
        staged = []
        for shard in range(shards):
            target = out_dir / f"shard-{shard}.csv"
            write_if_changed(target, original.decode("utf-8", errors="surrogateescape"))
            staged.append(target)
        return staged
    staged = []
    for shard, shard_rows in enumerate(buffers):
        target = out_dir / f"shard-{shard}.csv"
        text = _csv_text([[LINE_COLUMN, *header], *shard_rows])
        write_if_changed(target, text)
        staged.append(target)
    return staged


def _csv_text(rows: list[list[str]]) -> str:
    import io

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def build_index(inputs: dict, salt_file: str, shards: int, staging: str) -> RawIndex:
    """Index every configured raw input into per-shard file lists, reusing the cache for unchanged files.

    A configured input that does not exist is listed as it is, for every shard, so Snakemake stops with
    its usual "Missing input files" naming it (and `--lint` still works on a fresh clone).
    """
    regex_text = inputs.get("fasta_subject_regex", "")
    staging_dir = Path(staging)
    cache_path = staging_dir / "index.json"
    index = RawIndex(shards=shards)
    missing = {name: path for name, path in (("dicom", inputs.get("dicom")), ("fasta", inputs.get("fasta")))
               if path and not os.path.isdir(path)}
    missing.update({f"ehr{n}": t["path"] for n, t in enumerate(inputs.get("ehr") or [])
                    if not os.path.isfile(t["path"])})
    for name, path in missing.items():
        target = index.ehr if name.startswith("ehr") else getattr(index, name)
        for shard in range(shards):
            target.setdefault(shard, []).append(path)
    present = {k for k in ("dicom", "fasta") if inputs.get(k) and k not in missing}
    tables = [t for n, t in enumerate(inputs.get("ehr") or []) if f"ehr{n}" not in missing]
    if missing and (present or tables):
        return index  # a run would stop at the missing input anyway; index nothing until it is there
    if not (present or tables):
        return index

    key = load_or_create_salt(salt_file)
    fingerprint = _fingerprint(key, shards, regex_text)
    cache = {}
    if cache_path.exists():
        cache = json.loads(cache_path.read_text())
        if cache.get("fingerprint") != fingerprint:
            cache = {}
    fresh = {"fingerprint": fingerprint, "dicom": {}, "fasta": {}, "ehr": {}}

    def indexed(kind: str, root: str, reader) -> dict[int, list[str]]:
        by_shard: dict[int, list[str]] = defaultdict(list)
        for path in _walk(root):
            if kind == "fasta" and not path.lower().endswith(FASTA_SUFFIXES):
                continue
            stat = _stat(path)
            hit = cache.get(kind, {}).get(path)
            assigned = hit[1] if hit and hit[0] == stat else reader(path)
            fresh[kind][path] = [stat, assigned]
            for shard in assigned:
                by_shard[shard].append(path)
        return dict(by_shard)

    if "dicom" in present:
        root = inputs["dicom"]
        index.dicom = indexed("dicom", root, lambda p: dicom_file_shards(p, root, key, shards))
    if "fasta" in present:
        root, regex = inputs["fasta"], re.compile(regex_text)
        index.fasta = indexed("fasta", root, lambda p: fasta_file_shards(p, root, key, shards, regex))
    for number, table in enumerate(tables):
        out_dir = staging_dir / "ehr" / f"table-{number}"
        stat = _stat(table["path"])
        staged = [out_dir / f"shard-{k}.csv" for k in range(shards)]
        encoding = table.get("encoding") or ehr_csv.table_default("encoding")
        hit = cache.get("ehr", {}).get(table["path"])
        if not (hit and hit == [stat, table["subject_id"], encoding] and all(p.exists() for p in staged)):
            staged = stage_ehr_table(table["path"], table["subject_id"], key, shards, out_dir, encoding)
        fresh["ehr"][table["path"]] = [stat, table["subject_id"], encoding]
        for shard, path in enumerate(staged):
            index.ehr.setdefault(shard, []).append(str(path))
    write_if_changed(cache_path, json.dumps(fresh, sort_keys=True))
    return index


def staged_tables(tables: list[dict], staged_paths: list[str]) -> list[dict]:
    """The config's EHR tables with each one's staged CSV for a shard (ingest_ehr.py's --tables-json)."""
    return [{**table, "staged": path} for table, path in zip(tables, staged_paths, strict=True)]
