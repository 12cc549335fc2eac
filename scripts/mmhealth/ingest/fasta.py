"""Ingest FASTA: records from *.fa/*.fasta/*.fna (optionally .gz, any depth) -> fixed-size sequence windows.

The subject comes from the record id through a regex with a named group `subject_id`; the record id itself
leaves only as a keyed pseudonym. Bases are upper-cased and ambiguous IUPAC codes become N; `n_policy` says
what happens next: `drop` drops windows whose N fraction is above `max_n_fraction` (counted), `keep` keeps
every window, `mask` keeps every window and also hard-masks soft-masked (lower-case) bases as N. Files are
read in large blocks and split at record starts, not line by line (the records and bases agree with
Bio.SeqIO's on messy files: tested), and hashed for the manifest as they are read.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from mmhealth.core.pseudonym import record_pseudonyms, subject_pseudonym
from mmhealth.ingest import common
from mmhealth.ingest.fasta_windows import DNA_SCHEMA, RecordBatch, WindowColumns

log = logging.getLogger("ingest_fasta")

FASTA_SUFFIXES = (".fa", ".fasta", ".fna")
N_POLICIES = ("drop", "mask", "keep")
IUPAC_BASES = "ACGTURYSWKMBDHVN"
WHITESPACE = b" \t\r\n\v\f"
INVALID = ord("!")  # what a non-IUPAC byte becomes: never a base, so one find() locates it
STREAM_ERRORS = (EOFError, OSError, zlib.error, UnicodeDecodeError, ValueError)
READ_BYTES = 1 << 22
BATCH_BASES = 1 << 26  # window accepted records this many bases at a time (bounded memory)


def base_table(n_policy: str) -> bytes:
    """256-byte translation: bases upper-cased, RNA U as T, ambiguity codes as N, anything else INVALID;
    with `mask`, soft-masked (lower-case) bases become N too."""
    table = bytearray([INVALID]) * 256
    for code in IUPAC_BASES:
        target = {"U": "T"}.get(code, code if code in "ACGTN" else "N")
        table[ord(code)] = ord(target)
        table[ord(code.lower())] = ord("N" if n_policy == "mask" else target)
    return bytes(table)


@dataclass(frozen=True)
class WindowParams:
    """How records become windows; stored in the Parquet metadata."""

    subject_regex: str
    window: int = 256
    stride: int = 256
    max_n_fraction: float = 0.5
    n_policy: str = "drop"

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window and stride must be at least 1, got {self.window} and {self.stride}")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise ValueError(f"max_n_fraction must be within [0, 1], got {self.max_n_fraction}")
        if self.n_policy not in N_POLICIES:
            raise ValueError(f"n_policy must be one of {', '.join(N_POLICIES)}, got {self.n_policy!r}")
        if "subject_id" not in re.compile(self.subject_regex).groupindex:
            raise ValueError(f"subject regex {self.subject_regex!r} has no named group (?P<subject_id>...)")


def is_fasta(path: Path) -> bool:
    """A FASTA input by its name: .fa/.fasta/.fna, optionally followed by .gz (any case)."""
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(FASTA_SUFFIXES)


def record_segments(handle: BinaryIO) -> Iterator[bytes]:
    """The file's text in pieces of whole records, read READ_BYTES at a time: every piece but the first
    starts at a record's '>' (the first may begin with text before any record), none ends inside a record."""
    parts: list[bytes] = []
    line_start = True  # the next byte read starts a line
    while block := handle.read(READ_BYTES):
        last = block.rfind(b"\n>")
        cut = last + 1 if last != -1 else 0 if line_start and block[:1] == b">" else None
        line_start = block[-1:] == b"\n"
        if cut is None:  # still inside one record (or the text before the first)
            parts.append(block)
            continue
        if parts or cut:
            parts.append(block[:cut])
            yield b"".join(parts)
        parts = [block[cut:]]
    if parts:
        yield b"".join(parts)


def record_starts(segment: bytes) -> list[int]:
    """Offsets of the '>' that start a line, i.e. a record, in one segment."""
    codes = np.frombuffer(segment, dtype=np.uint8)
    marks = np.flatnonzero(codes == ord(">"))
    return marks[(marks == 0) | (codes[marks - 1] == ord("\n"))].tolist()


def record_problem(raw: bytes, bases: bytes) -> str | None:
    """Why a record's bases are refused (empty or non-IUPAC), or None when they are fine."""
    if not bases:
        return "empty sequence"
    first = bases.find(INVALID)
    if first == -1:
        return None
    text = raw.translate(None, WHITESPACE).decode("utf-8", "backslashreplace").upper()
    characters = sorted(set(text) - set(IUPAC_BASES))
    return (f"non-IUPAC characters {', '.join(repr(c) for c in characters[:10])} "
            f"(first at position {first + 1})")


class _HashingReader:
    """A binary file whose bytes are hashed as they are read (gzip reads through it)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def finish(self) -> str:
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


class _GunzipReader:
    """Gzip members one after another (bgzip too); what was decompressed before a cut is returned first."""

    def __init__(self, raw: _HashingReader) -> None:
        self.raw, self.inflater, self.pending = raw, None, b""

    def read(self, size: int = -1) -> bytes:
        while True:
            data, self.pending = self.pending or self.raw.read(1 << 20), b""
            if self.inflater is None:
                if not data:
                    return b""  # the stream ended between members: a clean end
                data = data.lstrip(b"\x00")  # zero padding between or after members is allowed
                if not data:
                    continue
                if not data.startswith(b"\x1f\x8b"[:len(data)]):
                    raise gzip.BadGzipFile(f"Not a gzipped file ({data[:2]!r})")
                self.inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
            elif not data:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            out = self.inflater.decompress(data, READ_BYTES)
            if self.inflater.eof:
                self.pending, self.inflater = self.inflater.unused_data, None
            else:
                self.pending = self.inflater.unconsumed_tail
            if out:
                return out


@dataclass
class FileResult:
    """What one file gave this job: its owned records, accepted (with windows) or refused, or where it broke."""

    records_read: int = 0  # every record of the file, whoever owns it
    records_in: int = 0  # the records this job counts
    records_out: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)  # (record number, reason)
    windows_dropped: int = 0
    n_fraction: dict[str, float] = field(default_factory=dict)
    new_ids: dict[str, tuple[str, int]] = field(default_factory=dict)  # raw id -> (file, record number) first
    # seen there; raw ids stay in memory
    broken: str | None = None

    def quarantine(self, source: str) -> list[common.QuarantineRow]:
        return [common.QuarantineRow(source, f"record {number}", reason) for number, reason in sorted(self.refused)]


class FastaReader:
    """Turns the FASTA files of one shard job into windows, quarantine rows and counts. Accepted records of
    several files are windowed together (`flush`), so a file's result is complete only after the last flush."""

    def __init__(self, params: WindowParams, key: bytes, job: common.ShardJob) -> None:
        self.params, self.key, self.job = params, key, job
        self.pattern = re.compile(params.subject_regex)
        self.table = base_table(params.n_policy)
        self.first_seen: dict[str, tuple[str, int]] = {}
        self.files: list[FileResult] = []
        self.batch, self.columns = RecordBatch(), WindowColumns()
        self._owners: dict[str, int | None] = {}

    def _headers(self, segment: bytes, starts: list[int], ends: list[int],
                 result: FileResult) -> tuple[list[int], list[str], list[str]]:
        """(offset of the header's newline or -1, record id, raw subject or '') of each record of a segment,
        header lines decoded in one call; a header that is not UTF-8 breaks the file after the one before."""
        newlines = [segment.find(b"\n", start, end) for start, end in zip(starts, ends, strict=True)]
        lines = [segment[start + 1:end if newline == -1 else newline]
                 for start, end, newline in zip(starts, ends, newlines, strict=True)]
        try:
            titles = b"\n".join(lines).decode("utf-8").split("\n")
        except UnicodeDecodeError:
            for line in lines:
                line.decode("utf-8")  # raises at the first bad header, with its own position
                result.records_read += 1
            raise
        records = [(title.split(None, 1) or [""])[0] for title in titles]
        search = self.pattern.search
        subjects = [(match.group("subject_id") or "").strip() if record and (match := search(record)) else ""
                    for record in records]
        return newlines, records, subjects

    def _owned(self, subject: str) -> int | None:
        """The subject's pseudonym when this job owns it, else None (cached: subjects have many records)."""
        if subject not in self._owners:
            pseudonym = subject_pseudonym(subject, self.key)
            self._owners[subject] = pseudonym if self.job.owns_subject(pseudonym) else None
        return self._owners[subject]

    def read_file(self, handle: BinaryIO, source: str) -> FileResult:
        """Classify every record of one open file; a stream that breaks sets `broken`."""
        result = FileResult()
        self.files.append(result)
        try:
            for segment in record_segments(handle):
                self._read_segment(segment, source, result)
                if self.batch.size >= BATCH_BASES:
                    self.flush()
        except STREAM_ERRORS as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            where = f"after record {result.records_read}" if result.records_read else "before the first record"
            result.broken = f"unreadable file, broke {where}: {type(exc).__name__}: {first_line}"
        return result

    def _read_segment(self, segment: bytes, source: str, result: FileResult) -> None:
        """Classify the records of one segment and queue the accepted ones (the per-record hot loop: what
        is the same for every record is looked up once, outside it)."""
        starts = record_starts(segment)
        if result.records_read == 0 and segment[:starts[0] if starts else len(segment)].strip(WHITESPACE):
            raise ValueError("text before the first '>' header")
        if not starts:
            return  # blank lines before the first record, read as a segment of their own
        ends = [*starts[1:], len(segment)]
        newlines, records, subjects = self._headers(segment, starts, ends, result)
        owns_unassigned = self.job.owns_unassigned(source)
        table, first_seen, new_ids, refused = self.table, self.first_seen, result.new_ids, result.refused
        batch, file, owners = self.batch, len(self.files) - 1, self._owners
        number = result.records_read
        for record, subject, newline, end in zip(records, subjects, newlines, ends, strict=True):
            number += 1
            if not subject:
                if owns_unassigned:
                    result.records_in += 1
                    refused.append((number, "empty header" if not record else
                                    "header does not match the subject regex"))
                continue
            subject_id = owners[subject] if subject in owners else self._owned(subject)
            if subject_id is None:
                continue  # another shard's job counts this record
            result.records_in += 1
            earlier = first_seen.get(record) or new_ids.get(record)
            if earlier:
                refused.append((number, f"duplicate record id (first seen in {earlier[0]} record {earlier[1]})"))
                continue
            new_ids[record] = (source, number)
            body = b"" if newline == -1 else segment[newline + 1:end]
            bases = body.translate(table, WHITESPACE)
            problem = record_problem(body, bases)
            if problem:
                refused.append((number, problem))
                continue
            batch.add(bases, subject_id, record, file, number)
        result.records_read = number

    def flush(self) -> None:
        """Window the queued records into `columns` and tally them in their files' results; records left
        without a window are refused."""
        batch, params = self.batch, self.params
        if not batch.bases:
            return
        batch.record_ids = record_ids = record_pseudonyms(batch.record_ids, self.key, kind="fasta")
        outcome = self.columns.add_batch(batch, params.window, params.stride,
                                         params.max_n_fraction if params.n_policy == "drop" else None)
        files = np.array(batch.files)
        records_out = np.bincount(files[outcome.kept > 0], minlength=len(self.files))
        windows_dropped = np.bincount(files, weights=outcome.dropped, minlength=len(self.files))
        for file in np.unique(files).tolist():
            self.files[file].records_out += int(records_out[file])
            self.files[file].windows_dropped += int(windows_dropped[file])
        for position, reason in outcome.empty.items():
            self.files[batch.files[position]].refused.append((batch.numbers[position], reason))
        for file, record_id, n_fraction in zip(batch.files, record_ids, outcome.n_fraction, strict=True):
            self.files[file].n_fraction[record_id] = n_fraction
        self.batch = RecordBatch()


@dataclass
class FastaResult:
    """What one job collected over all its files."""

    table: pa.Table = field(default_factory=DNA_SCHEMA.empty_table)
    quarantine: list[common.QuarantineRow] = field(default_factory=list)
    counts: common.RecordCounts = field(default_factory=common.RecordCounts)
    inputs: dict[str, str] = field(default_factory=dict)
    windows_dropped: int = 0
    n_fraction: dict[str, float] = field(default_factory=dict)


def open_fasta(path: Path) -> tuple[_HashingReader, BinaryIO]:
    """(hashing raw reader, binary stream of FASTA text): gzip-compressed names are decompressed."""
    raw = _HashingReader(open(path, "rb"))  # noqa: SIM115  (closed by collect_fasta)
    if path.name.lower().endswith(".gz"):
        return raw, _GunzipReader(raw)  # type: ignore[return-value]
    return raw, raw  # type: ignore[return-value]


def collect_fasta(root: str | Path, files: Sequence[str | Path], params: WindowParams, key: bytes,
                  job: common.ShardJob) -> FastaResult:
    """Read `files` (under `root`) in path order and keep the records `job` owns."""
    root = Path(root)
    reader, total = FastaReader(params, key, job), FastaResult()
    sources = sorted((common.source_of(f, root), Path(f)) for f in files)
    for source, path in common.progress(sources, "fasta files", "file"):
        raw, stream = open_fasta(path)
        try:
            result = reader.read_file(stream, source)
            total.inputs[source] = raw.finish()
        finally:
            raw.raw.close()
        if not result.broken and result.records_read:
            reader.first_seen.update({k: v for k, v in result.new_ids.items() if k not in reader.first_seen})
    reader.flush()
    dropped_files = []
    for ordinal, ((source, _), result) in enumerate(zip(sources, reader.files, strict=True)):
        if result.broken or result.records_read == 0:
            dropped_files.append(ordinal)
            if job.owns_unassigned(source):  # a whole-file problem: one job counts what was read of it
                total.counts.records_in += result.records_read
                total.counts.records_quarantined += result.records_read
                total.quarantine.append(common.QuarantineRow(source, "file", result.broken or
                                                             "no FASTA records in file"))
            continue
        total.counts.records_in += result.records_in
        total.counts.records_out += result.records_out
        total.counts.records_quarantined += len(result.refused)
        total.quarantine.extend(result.quarantine(source))
        total.windows_dropped += result.windows_dropped
        total.n_fraction.update(result.n_fraction)
    total.table = reader.columns.table(without_files=dropped_files)
    return total


def _extra(result: FastaResult) -> dict[str, Any]:
    return {"windows_dropped_n_fraction": result.windows_dropped,
            "n_fraction_per_record": dict(sorted(result.n_fraction.items()))}


def ingest_fasta(input_dir: str | Path, key: bytes, out_dir: str | Path, shards: int, subject_regex: str,
                 window: int = 256, stride: int = 256, max_n_fraction: float = 0.5,
                 n_policy: str = "drop", source_map: str | Path | None = None) -> dict[str, Any]:
    """Ingest FASTA files under `input_dir`; write part-<k>, quarantine, manifest; return the manifest.
    Files are named by keyed hashes; `source_map` (staging) receives the hash -> path map."""
    params = WindowParams(subject_regex, window, stride, max_n_fraction, n_policy)
    files = common.list_input_files(input_dir, is_fasta)
    result = collect_fasta(input_dir, files, params, key, common.WHOLE_INPUT)
    return common.write_ingest_outputs(out_dir, "dna", result.table, shards, result.quarantine,
                                       result.counts, result.inputs, asdict(params), _extra(result),
                                       names=common.SourceNames(key, source_map))


def ingest_fasta_shard(input_dir: str | Path, files: Sequence[str | Path], key: bytes, job: common.ShardJob,
                       params: WindowParams, out_part: str | Path, out_quarantine: str | Path,
                       out_manifest: str | Path, source_map: str | Path | None = None) -> dict[str, Any]:
    """One shard job: write only `job`'s subjects (and its unassigned records) to one part; files are named
    by keyed hashes, `source_map` (staging) receives the hash -> path map."""
    result = collect_fasta(input_dir, files, params, key, job)
    return common.write_shard_outputs(out_part, out_quarantine, out_manifest, "dna", result.table,
                                      job, result.quarantine, result.counts, result.inputs, asdict(params),
                                      _extra(result), names=common.SourceNames(key, source_map))
