"""Sequence windows of many FASTA records at once: bounds, N fractions and Arrow columns, vectorised.

Cleaned records (bases ACGTN) of many files are collected in a `RecordBatch`; `WindowColumns.add_batch`
cuts all of them into windows with numpy (no Python object per window; one slice per run of adjacent
windows) and appends Arrow chunks. Batches span files because a batch has a fixed cost of ~0.5 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DNA_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("record_id", pa.string()), ("window_index", pa.int32()),
    ("offset", pa.int64()), ("sequence", pa.string()), ("n_fraction", pa.float32()),
])
FILE_COLUMN = "_file"  # which input file a window came from: in memory only
MAX_CHUNK_BYTES = 1 << 30  # Arrow string offsets are int32: window bases go out in chunks below 2 GiB
N = ord("N")


def window_bounds(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of full windows every `stride`, then one last partial window of at least half a window."""
    full = (length - window) // stride + 1 if length >= window else 0
    bounds = [(start, start + window) for start in range(0, full * stride, stride)]
    last = full * stride
    if last < length and 2 * (length - last) >= window:
        bounds.append((last, length))
    return bounds


def windows(sequence: str, window: int, stride: int) -> Iterator[tuple[int, int, str]]:
    """(window_index, offset, bases) of `window_bounds`."""
    for index, (start, end) in enumerate(window_bounds(len(sequence), window, stride)):
        yield index, start, sequence[start:end]


def window_counts(lengths: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Number of windows of each record length, as `window_bounds` cuts them."""
    full = np.where(lengths >= window, (lengths - window) // stride + 1, 0)
    rest = lengths - full * stride
    return full + ((rest > 0) & (2 * rest >= window))


def n_counter(bases: list[bytes], record_start: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """For offsets into the records `bases` end to end (record i starts at record_start[i]), how many N
    come before each. N are rare, so their positions are searched instead of keeping a running count
    per base (8 bytes a base, once the costliest step of windowing)."""
    with_n = [i for i, record in enumerate(bases) if record.find(b"N") != -1]
    if not with_n:
        return np.zeros_like
    positions = np.concatenate([np.flatnonzero(np.frombuffer(bases[i], dtype=np.uint8) == N) + record_start[i]
                                for i in with_n])
    return lambda offsets: np.searchsorted(positions, offsets)


def adjacent_runs(record: np.ndarray, first: np.ndarray, last: np.ndarray) -> list[tuple[int, int, int]]:
    """(record, start, end) spans covering windows [first, last) of `record` in order, adjacent windows of
    one record merged: without overlap a record's windows are one slice of its bases, not one per window."""
    if not len(first):
        return []
    run = np.flatnonzero(np.r_[True, (first[1:] != last[:-1]) | (record[1:] != record[:-1])])
    run_last = np.r_[run[1:], len(first)] - 1
    return list(zip(record[run].tolist(), first[run].tolist(), last[run_last].tolist(), strict=True))


@dataclass
class RecordBatch:
    """Accepted records waiting to be windowed, from one or more files: cleaned bases, subject, record id
    (raw until the reader pseudonymises the whole batch at once), file ordinal, record number in the file."""

    bases: list[bytes] = field(default_factory=list)
    subject_ids: list[int] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    files: list[int] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    size: int = 0

    def add(self, bases: bytes, subject_id: int, record_id: str, file: int, number: int) -> None:
        self.bases.append(bases)
        self.subject_ids.append(subject_id)
        self.record_ids.append(record_id)
        self.files.append(file)
        self.numbers.append(number)
        self.size += len(bases)


@dataclass
class BatchOutcome:
    """What windowing a batch gave, per record of the batch: windows kept and dropped, N fraction, and why a
    record kept no window."""

    kept: np.ndarray
    dropped: np.ndarray
    n_fraction: list[float]
    empty: dict[int, str]  # batch position -> reason


@dataclass
class WindowColumns:
    """Arrow chunks of the output columns, appended batch by batch, with each window's file ordinal so that
    the windows of a file found broken later can be left out."""

    chunks: dict[str, list[pa.Array]] = field(
        default_factory=lambda: {n: [] for n in [*DNA_SCHEMA.names, FILE_COLUMN]})

    def add_batch(self, batch: RecordBatch, window: int, stride: int,
                  max_n_fraction: float | None) -> BatchOutcome:
        """Window every record of `batch`; drop windows above `max_n_fraction` unless it is None."""
        lengths = np.fromiter(map(len, batch.bases), dtype=np.int64, count=len(batch.bases))
        record_start = np.cumsum(lengths) - lengths
        n_before = n_counter(batch.bases, record_start)
        record_n = (n_before(record_start + lengths) - n_before(record_start)) / np.maximum(lengths, 1)
        counts = window_counts(lengths, window, stride)
        record = np.repeat(np.arange(len(lengths)), counts)
        index = np.arange(len(record)) - np.repeat(np.cumsum(counts) - counts, counts)
        offset = index * stride
        end = np.minimum(offset + window, lengths[record])
        first, last = record_start[record] + offset, record_start[record] + end
        fraction = (n_before(last) - n_before(first)) / (end - offset)
        keep = np.ones(len(record), dtype=bool) if max_n_fraction is None else fraction <= max_n_fraction
        kept = np.bincount(record[keep], minlength=len(lengths))
        empty = {i: f"no window kept: all {counts[i]} windows have an N fraction above {max_n_fraction}"
                 if counts[i] else f"{lengths[i]} bases, shorter than half a window ({window})"
                 for i in np.flatnonzero(kept == 0).tolist()}
        self._append(batch, record_start, record[keep], index[keep], offset[keep], first[keep], last[keep],
                     fraction[keep])
        return BatchOutcome(kept, counts - kept, [round(value, 6) for value in record_n.tolist()], empty)

    def _append(self, batch: RecordBatch, record_start: np.ndarray, record: np.ndarray, index: np.ndarray,
                offset: np.ndarray, first: np.ndarray, last: np.ndarray, fraction: np.ndarray) -> None:
        """Append kept windows (record, first and last base counted over the batch's records end to end)."""
        sizes = last - first
        bounds = np.r_[0, np.cumsum(sizes)]
        cuts = np.searchsorted(bounds, np.arange(MAX_CHUNK_BYTES, bounds[-1], MAX_CHUNK_BYTES), side="right") - 1
        views = [memoryview(bases) for bases in batch.bases]
        subjects, records = np.array(batch.subject_ids, dtype=np.int64), pa.array(batch.record_ids, pa.string())
        files = np.array(batch.files, dtype=np.int32)
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(sizes)], strict=True):
            if hi <= lo:
                continue
            runs = adjacent_runs(record[lo:hi], first[lo:hi] - record_start[record[lo:hi]],
                                 last[lo:hi] - record_start[record[lo:hi]])
            bases = b"".join([views[r][a:b] for r, a, b in runs])
            offsets = pa.array(bounds[lo:hi + 1] - bounds[lo], type=pa.int32())
            self.chunks["sequence"].append(pa.StringArray.from_buffers(hi - lo, offsets.buffers()[1],
                                                                       pa.py_buffer(bases)))
            self.chunks["subject_id"].append(pa.array(subjects[record[lo:hi]], pa.int64()))
            self.chunks["record_id"].append(records.take(pa.array(record[lo:hi])))
            self.chunks["window_index"].append(pa.array(index[lo:hi].astype(np.int32)))
            self.chunks["offset"].append(pa.array(offset[lo:hi], pa.int64()))
            self.chunks["n_fraction"].append(pa.array(fraction[lo:hi].astype(np.float32)))
            self.chunks[FILE_COLUMN].append(pa.array(files[record[lo:hi]], pa.int32()))

    def table(self, without_files: Collection[int] = ()) -> pa.Table:
        """The windows as a DNA_SCHEMA table, leaving out those of the files `without_files`."""
        table = pa.Table.from_pydict({name: pa.chunked_array(self.chunks[name], type=DNA_SCHEMA.field(name).type)
                                      for name in DNA_SCHEMA.names}, schema=DNA_SCHEMA)
        if not without_files:
            return table
        files = pa.chunked_array(self.chunks[FILE_COLUMN], type=pa.int32())
        return table.filter(pc.invert(pc.is_in(files, pa.array(sorted(without_files), pa.int32()))))
