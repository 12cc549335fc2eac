"""Ingest FASTA: records from *.fa/*.fasta/*.fna (optionally .gz, any depth) -> fixed-size sequence windows.

The subject comes from the record id through a regex with a named group `subject_id`; the record id itself
leaves only as a keyed pseudonym. Bases are upper-cased, ambiguous IUPAC codes become N, and windows with
too many N are dropped and counted.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
from Bio import SeqIO

import ingest_common as common
from pseudonym import load_or_create_salt, record_pseudonym, subject_pseudonym

log = logging.getLogger("ingest_fasta")

DNA_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("record_id", pa.string()), ("window_index", pa.int32()),
    ("offset", pa.int64()), ("sequence", pa.string()), ("n_fraction", pa.float32()),
])
FASTA_SUFFIXES = (".fa", ".fasta", ".fna")
IUPAC_BASES = "ACGTURYSWKMBDHVN"
# Ambiguity codes carry no single base: N. RNA's U pairs like T.
TO_ACGTN = str.maketrans({**{code: "N" for code in "RYSWKMBDHV"}, "U": "T"})
NOT_IUPAC = re.compile(f"[^{IUPAC_BASES}]")
STREAM_ERRORS = (EOFError, OSError, zlib.error, UnicodeDecodeError, ValueError)


@dataclass(frozen=True)
class WindowParams:
    """How records become windows; stored in the Parquet metadata."""

    subject_regex: str
    window: int = 256
    stride: int = 256
    max_n_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window and stride must be at least 1, got {self.window} and {self.stride}")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise ValueError(f"max_n_fraction must be within [0, 1], got {self.max_n_fraction}")
        if "subject_id" not in re.compile(self.subject_regex).groupindex:
            raise ValueError(f"subject regex {self.subject_regex!r} has no named group (?P<subject_id>...)")


def is_fasta(path: Path) -> bool:
    """A FASTA input by its name: .fa/.fasta/.fna, optionally followed by .gz (any case)."""
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(FASTA_SUFFIXES)


def open_text(path: Path) -> TextIO:
    """Text handle over a plain or gzip-compressed file."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def windows(sequence: str, window: int, stride: int) -> Iterator[tuple[int, int, str]]:
    """(window_index, offset, bases): full windows every `stride`, then one last partial >= half a window."""
    length = len(sequence)
    index = 0
    while index * stride + window <= length:
        yield index, index * stride, sequence[index * stride:index * stride + window]
        index += 1
    offset = index * stride
    if offset < length and 2 * (length - offset) >= window:
        yield index, offset, sequence[offset:]


def record_problem(sequence: str) -> str | None:
    """Why a record's bases are refused (empty or non-IUPAC), or None when they are fine."""
    if not sequence:
        return "empty sequence"
    bad = NOT_IUPAC.search(sequence)
    if bad:
        characters = sorted(set(NOT_IUPAC.findall(sequence)))
        return (f"non-IUPAC characters {', '.join(repr(c) for c in characters[:10])} "
                f"(first at position {bad.start() + 1})")
    return None


@dataclass
class FileResult:
    """What one FASTA file gave: its records, accepted (with windows), refused, or where the file broke."""

    records: int = 0
    accepted: list[tuple[int, str, list[tuple[int, int, str, float]]]] = field(default_factory=list)
    refused: list[common.QuarantineRow] = field(default_factory=list)
    windows_dropped: int = 0
    new_ids: dict[str, str] = field(default_factory=dict)  # raw record id -> where first seen (memory only)
    broken: str | None = None


def record_windows(sequence: str, params: WindowParams) -> tuple[list[tuple[int, int, str, float]], int]:
    """Kept (window_index, offset, bases, n_fraction) of an upper-case IUPAC sequence; count dropped."""
    kept, dropped = [], 0
    for index, offset, bases in windows(sequence.translate(TO_ACGTN), params.window, params.stride):
        n_fraction = bases.count("N") / len(bases)
        if n_fraction > params.max_n_fraction:
            dropped += 1
        else:
            kept.append((index, offset, bases, n_fraction))
    return kept, dropped


def read_fasta_file(path: Path, source: str, params: WindowParams, key: bytes,
                    first_seen: dict[str, str]) -> FileResult:
    """Classify every record of one file; a stream that breaks sets `broken` and keeps the records counted."""
    pattern = re.compile(params.subject_regex)
    result = FileResult()
    try:
        with open_text(path) as handle:
            for number, record in enumerate(SeqIO.parse(handle, "fasta"), start=1):
                result.records = number
                locator = f"record {number}"
                match = pattern.search(record.id)
                subject = (match.group("subject_id") or "").strip() if match else ""
                earlier = first_seen.get(record.id) or result.new_ids.get(record.id)
                result.new_ids.setdefault(record.id, f"{source} {locator}")
                sequence = str(record.seq).upper()
                if not record.id:
                    reason = "empty header"
                elif not subject:
                    reason = "header does not match the subject regex"
                elif earlier:
                    reason = f"duplicate record id (first seen in {earlier})"
                else:
                    reason = record_problem(sequence)
                if reason is None:
                    kept, dropped = record_windows(sequence, params)
                    result.windows_dropped += dropped
                    if kept:
                        result.accepted.append((subject_pseudonym(subject, key),
                                                record_pseudonym(record.id, key, kind="fasta"), kept))
                        continue
                    reason = (f"no window kept: all {dropped} windows have an N fraction above "
                              f"{params.max_n_fraction}" if dropped else
                              f"{len(sequence)} bases, shorter than half a window ({params.window})")
                result.refused.append(common.QuarantineRow(source, locator, reason))
    except STREAM_ERRORS as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        where = f"after record {result.records}" if result.records else "before the first record"
        result.broken = (f"unreadable file, broke {where}: {type(exc).__name__}: "
                         f"{common.strip_paths(first_line, path)}")
    return result


def ingest_fasta(input_dir: str | Path, key: bytes, out_dir: str | Path, shards: int, subject_regex: str,
                 window: int = 256, stride: int = 256, max_n_fraction: float = 0.5) -> dict[str, Any]:
    """Ingest FASTA files under `input_dir`; write part-<k>, quarantine, manifest; return the manifest."""
    params = WindowParams(subject_regex, window, stride, max_n_fraction)
    root = Path(input_dir)
    files = common.list_input_files(root, is_fasta)
    counts = common.RecordCounts()
    quarantine: list[common.QuarantineRow] = []
    columns: dict[str, list] = {name: [] for name in DNA_SCHEMA.names}
    first_seen: dict[str, str] = {}
    windows_dropped = 0
    for path in common.progress(files, "fasta files", "file"):
        source = common.relative_source(path, root)
        result = read_fasta_file(path, source, params, key, first_seen)
        counts.records_in += result.records
        if result.broken:
            # A file that breaks mid-stream is refused whole, its records read so far counted as refused.
            counts.records_quarantined += result.records
            quarantine.append(common.QuarantineRow(source, "file", result.broken))
            continue
        if result.records == 0:
            quarantine.append(common.QuarantineRow(source, "file", "no FASTA records in file"))
        first_seen.update({k: v for k, v in result.new_ids.items() if k not in first_seen})
        counts.records_out += len(result.accepted)
        counts.records_quarantined += len(result.refused)
        quarantine.extend(result.refused)
        windows_dropped += result.windows_dropped
        for subject_id, record_id, kept in result.accepted:
            for index, offset, bases, n_fraction in kept:
                row = (subject_id, record_id, index, offset, bases, n_fraction)
                for name, value in zip(DNA_SCHEMA.names, row, strict=True):
                    columns[name].append(value)
    table = pa.Table.from_pydict(columns, schema=DNA_SCHEMA)
    return common.write_ingest_outputs(
        out_dir, "dna", table, shards, quarantine, counts, common.input_checksums(files, root),
        asdict(params), {"windows_dropped_n_fraction": windows_dropped})


def main(argv: list[str] | None = None) -> None:
    common.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="folder of FASTA files (any depth)")
    parser.add_argument("--salt-file", required=True, help="secret pseudonym key file")
    parser.add_argument("--out-dir", required=True, help="results/ingest/dna")
    parser.add_argument("--shards", type=int, required=True, help="number of part-<k>.parquet files")
    parser.add_argument("--subject-regex", required=True, help="regex on record ids, with (?P<subject_id>)")
    parser.add_argument("--window", type=int, default=256, help="bases per window")
    parser.add_argument("--stride", type=int, default=256, help="bases between window starts")
    parser.add_argument("--max-n-fraction", type=float, default=0.5, help="drop windows with more N")
    args = parser.parse_args(argv)
    key = load_or_create_salt(args.salt_file)
    ingest_fasta(args.input, key, args.out_dir, args.shards, args.subject_regex, args.window, args.stride,
                 args.max_n_fraction)


if __name__ == "__main__":
    main()
