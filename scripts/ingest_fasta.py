"""Ingest FASTA: records from *.fa/*.fasta/*.fna (optionally .gz, any depth) -> fixed-size sequence windows.

The subject comes from the record id through a regex with a named group `subject_id`; the record id itself
leaves only as a keyed pseudonym. Bases are upper-cased and ambiguous IUPAC codes become N; `n_policy` says
what happens next: `drop` drops windows whose N fraction is above `max_n_fraction` (counted), `keep` keeps
every window, `mask` keeps every window and also hard-masks soft-masked (lower-case) bases as N. Files are
read in large blocks and split at record starts, not line by line, and hashed for the manifest as they are read.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import ingest_common as common
from fasta_windows import RecordBatch, WindowColumns
from pseudonym import load_or_create_salt, record_pseudonym, subject_pseudonym

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


def split_records(handle: BinaryIO) -> Iterator[bytes]:
    """The text before the first record, then each record's text starting at its '>'."""
    parts: list[bytes] = []
    previous = b"\n"
    while block := handle.read(READ_BYTES):
        starts = [0] if previous == b"\n" and block[:1] == b">" else []
        found = block.find(b"\n>")
        while found != -1:
            starts.append(found + 1)
            found = block.find(b"\n>", found + 1)
        done = 0
        for start in starts:
            parts.append(block[done:start])
            yield b"".join(parts)
            parts, done = [], start
        parts.append(block[done:])
        previous = block[-1:]
    yield b"".join(parts)


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
    new_ids: dict[str, str] = field(default_factory=dict)  # raw record id -> where first seen (memory only)
    batch: RecordBatch = field(default_factory=RecordBatch)
    broken: str | None = None

    def quarantine(self, source: str) -> list[common.QuarantineRow]:
        return [common.QuarantineRow(source, f"record {number}", reason) for number, reason in sorted(self.refused)]


class FastaReader:
    """Turns the FASTA files of one shard job into windows, quarantine rows and counts."""

    def __init__(self, params: WindowParams, key: bytes, job: common.ShardJob) -> None:
        self.params, self.key, self.job = params, key, job
        self.pattern = re.compile(params.subject_regex)
        self.table = base_table(params.n_policy)
        self.first_seen: dict[str, str] = {}
        self._subjects: dict[str, int] = {}

    def _subject(self, header: bytes) -> tuple[str, str]:
        """(record id, raw subject) of a header line ('' when absent or not matched)."""
        title = header[1:].decode("utf-8").strip()
        record = title.split(None, 1)[0] if title else ""
        match = self.pattern.search(record) if record else None
        return record, (match.group("subject_id") or "").strip() if match else ""

    def read_file(self, handle: BinaryIO, source: str, columns: WindowColumns) -> FileResult:
        """Classify every record of one open file; a stream that breaks sets `broken`."""
        result = FileResult()
        owns_unassigned = self.job.owns_unassigned(source)
        try:
            chunks = split_records(handle)
            if next(chunks).strip(WHITESPACE):
                raise ValueError("text before the first '>' header")
            for number, chunk in enumerate(chunks, start=1):
                newline = chunk.find(b"\n")
                header, body = (chunk, b"") if newline == -1 else (chunk[:newline], chunk[newline + 1:])
                record, subject = self._subject(header)
                result.records_read = number
                if not subject:
                    if owns_unassigned:
                        result.records_in += 1
                        reason = "empty header" if not record else "header does not match the subject regex"
                        result.refused.append((number, reason))
                    continue
                if subject not in self._subjects:
                    self._subjects[subject] = subject_pseudonym(subject, self.key)
                if not self.job.owns_subject(self._subjects[subject]):
                    continue  # another shard's job counts this record
                result.records_in += 1
                reason = self._record(result, record, self._subjects[subject], body, number, source)
                if reason:
                    result.refused.append((number, reason))
                if result.batch.size >= BATCH_BASES:
                    self.flush(result, columns)
            self.flush(result, columns)
        except STREAM_ERRORS as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            where = f"after record {result.records_read}" if result.records_read else "before the first record"
            result.broken = f"unreadable file, broke {where}: {type(exc).__name__}: {first_line}"
        return result

    def _record(self, result: FileResult, record: str, subject_id: int, body: bytes, number: int,
                source: str) -> str | None:
        """Queue one owned record's bases for windowing; the refusal reason, or None when it was queued."""
        earlier = self.first_seen.get(record) or result.new_ids.get(record)
        result.new_ids.setdefault(record, f"{source} record {number}")
        if earlier:
            return f"duplicate record id (first seen in {earlier})"
        bases = body.translate(self.table, WHITESPACE)
        problem = record_problem(body, bases)
        if problem:
            return problem
        result.batch.add(bases, subject_id, record_pseudonym(record, self.key, kind="fasta"), number)
        return None

    def flush(self, result: FileResult, columns: WindowColumns) -> None:
        """Window the queued records into `columns`; records left without a window are refused."""
        if not result.batch.bases:
            return
        params = self.params
        outcome = columns.add_batch(result.batch, params.window, params.stride,
                                    params.max_n_fraction if params.n_policy == "drop" else None)
        result.refused.extend(outcome.empty)
        result.records_out += outcome.records_out
        result.windows_dropped += outcome.windows_dropped
        result.n_fraction.update(outcome.n_fraction)
        result.batch = RecordBatch()


@dataclass
class FastaResult:
    """What one job collected over all its files."""

    columns: WindowColumns = field(default_factory=WindowColumns)
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
    for source, path in common.progress(sorted((common.source_of(f, root), Path(f)) for f in files),
                                        "fasta files", "file"):
        mark = total.columns.mark()
        raw, stream = open_fasta(path)
        try:
            result = reader.read_file(stream, source, total.columns)
            total.inputs[source] = raw.finish()
        finally:
            raw.raw.close()
        if result.broken or result.records_read == 0:
            total.columns.rollback(mark)
            if job.owns_unassigned(source):  # a whole-file problem: one job counts what was read of it
                total.counts.records_in += result.records_read
                total.counts.records_quarantined += result.records_read
                total.quarantine.append(common.QuarantineRow(source, "file", result.broken or
                                                             "no FASTA records in file"))
            continue
        reader.first_seen.update({k: v for k, v in result.new_ids.items() if k not in reader.first_seen})
        total.counts.records_in += result.records_in
        total.counts.records_out += result.records_out
        total.counts.records_quarantined += len(result.refused)
        total.quarantine.extend(result.quarantine(source))
        total.windows_dropped += result.windows_dropped
        total.n_fraction.update(result.n_fraction)
    return total


def _extra(result: FastaResult) -> dict[str, Any]:
    return {"windows_dropped_n_fraction": result.windows_dropped,
            "n_fraction_per_record": dict(sorted(result.n_fraction.items()))}


def ingest_fasta(input_dir: str | Path, key: bytes, out_dir: str | Path, shards: int, subject_regex: str,
                 window: int = 256, stride: int = 256, max_n_fraction: float = 0.5,
                 n_policy: str = "drop") -> dict[str, Any]:
    """Ingest FASTA files under `input_dir`; write part-<k>, quarantine, manifest; return the manifest."""
    params = WindowParams(subject_regex, window, stride, max_n_fraction, n_policy)
    files = common.list_input_files(input_dir, is_fasta)
    result = collect_fasta(input_dir, files, params, key, common.WHOLE_INPUT)
    return common.write_ingest_outputs(out_dir, "dna", result.columns.table(), shards, result.quarantine,
                                       result.counts, result.inputs, asdict(params), _extra(result))


def ingest_fasta_shard(input_dir: str | Path, files: Sequence[str | Path], key: bytes, job: common.ShardJob,
                       params: WindowParams, out_part: str | Path, out_quarantine: str | Path,
                       out_manifest: str | Path) -> dict[str, Any]:
    """One shard job: write only `job`'s subjects (and its unassigned records) to one part."""
    result = collect_fasta(input_dir, files, params, key, job)
    return common.write_shard_outputs(out_part, out_quarantine, out_manifest, "dna", result.columns.table(),
                                      job, result.quarantine, result.counts, result.inputs, asdict(params),
                                      _extra(result))


def main(argv: list[str] | None = None) -> None:
    common.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shard_arguments(parser, "folder of FASTA files (any depth)", "FASTA files (under --input)")
    parser.add_argument("--subject-regex", required=True, help="regex on record ids, with (?P<subject_id>)")
    parser.add_argument("--window", type=int, default=256, help="bases per window")
    parser.add_argument("--stride", type=int, default=256, help="bases between window starts")
    parser.add_argument("--max-n-fraction", type=float, default=0.5, help="drop windows with more N (drop)")
    parser.add_argument("--n-policy", choices=N_POLICIES, default="drop",
                        help="drop: drop N-rich windows; keep: keep all; mask: keep all, lower-case -> N")
    args = parser.parse_args(argv)
    params = WindowParams(args.subject_regex, args.window, args.stride, args.max_n_fraction, args.n_policy)
    ingest_fasta_shard(args.input, args.files, load_or_create_salt(args.salt_file),
                       common.ShardJob(args.shard, args.shards), params, args.out_part, args.quarantine,
                       args.manifest)


if __name__ == "__main__":
    main()
