"""Sequence windows of many FASTA records at once: bounds, N fractions and Arrow columns, vectorised.

Cleaned records (bases ACGTN) are collected in a `RecordBatch`; `WindowColumns.add_batch` cuts all of
them into windows with numpy (no Python object per window except one slice) and appends Arrow chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

DNA_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("record_id", pa.string()), ("window_index", pa.int32()),
    ("offset", pa.int64()), ("sequence", pa.string()), ("n_fraction", pa.float32()),
])
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


@dataclass
class RecordBatch:
    """Accepted records waiting to be windowed: cleaned bases, subject, record pseudonym, record number."""

    bases: list[bytes] = field(default_factory=list)
    subject_ids: list[int] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    size: int = 0

    def add(self, bases: bytes, subject_id: int, record_id: str, number: int) -> None:
        self.bases.append(bases)
        self.subject_ids.append(subject_id)
        self.record_ids.append(record_id)
        self.numbers.append(number)
        self.size += len(bases)


@dataclass
class BatchOutcome:
    """What windowing a batch gave: records with no window kept (number, reason), tallies, N fractions."""

    empty: list[tuple[int, str]]
    records_out: int
    windows_dropped: int
    n_fraction: dict[str, float]


@dataclass
class WindowColumns:
    """Arrow chunks of the output columns, appended batch by batch."""

    chunks: dict[str, list[pa.Array]] = field(default_factory=lambda: {n: [] for n in DNA_SCHEMA.names})

    def mark(self) -> int:
        """How many chunks exist now, for `rollback` when the file being read turns out broken."""
        return len(self.chunks["subject_id"])

    def rollback(self, mark: int) -> None:
        for chunks in self.chunks.values():
            del chunks[mark:]

    def add_batch(self, batch: RecordBatch, window: int, stride: int,
                  max_n_fraction: float | None) -> BatchOutcome:
        """Window every record of `batch`; drop windows above `max_n_fraction` unless it is None."""
        lengths = np.array([len(b) for b in batch.bases], dtype=np.int64)
        data = b"".join(batch.bases)
        record_start = np.cumsum(lengths) - lengths
        n_before = np.r_[0, np.cumsum(np.frombuffer(data, dtype=np.uint8) == N, dtype=np.int64)]
        record_n = (n_before[record_start + lengths] - n_before[record_start]) / np.maximum(lengths, 1)
        counts = window_counts(lengths, window, stride)
        record = np.repeat(np.arange(len(lengths)), counts)
        index = np.arange(len(record)) - np.repeat(np.cumsum(counts) - counts, counts)
        offset = index * stride
        end = np.minimum(offset + window, lengths[record])
        first, last = record_start[record] + offset, record_start[record] + end
        fraction = (n_before[last] - n_before[first]) / (end - offset)
        keep = np.ones(len(record), dtype=bool) if max_n_fraction is None else fraction <= max_n_fraction
        kept_per_record = np.bincount(record[keep], minlength=len(lengths))
        empty = [(batch.numbers[i], f"no window kept: all {counts[i]} windows have an N fraction above "
                  f"{max_n_fraction}" if counts[i] else
                  f"{lengths[i]} bases, shorter than half a window ({window})")
                 for i in np.flatnonzero(kept_per_record == 0)]
        self._append(batch, data, record[keep], index[keep], offset[keep], first[keep], last[keep],
                     fraction[keep])
        n_fraction = {batch.record_ids[i]: round(float(record_n[i]), 6) for i in range(len(lengths))}
        return BatchOutcome(empty, int(np.count_nonzero(kept_per_record)), int(len(keep) - keep.sum()),
                            n_fraction)

    def _append(self, batch: RecordBatch, data: bytes, record: np.ndarray, index: np.ndarray,
                offset: np.ndarray, first: np.ndarray, last: np.ndarray, fraction: np.ndarray) -> None:
        sizes = last - first
        bounds = np.r_[0, np.cumsum(sizes)]
        cuts = np.searchsorted(bounds, np.arange(MAX_CHUNK_BYTES, bounds[-1], MAX_CHUNK_BYTES), side="right") - 1
        view = memoryview(data)
        subjects, records = np.array(batch.subject_ids, dtype=np.int64), pa.array(batch.record_ids, pa.string())
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(sizes)], strict=True):
            if hi <= lo:
                continue
            bases = b"".join([view[a:b] for a, b in zip(first[lo:hi].tolist(), last[lo:hi].tolist(), strict=True)])
            offsets = pa.array(bounds[lo:hi + 1] - bounds[lo], type=pa.int32())
            self.chunks["sequence"].append(pa.StringArray.from_buffers(hi - lo, offsets.buffers()[1],
                                                                       pa.py_buffer(bases)))
            self.chunks["subject_id"].append(pa.array(subjects[record[lo:hi]], pa.int64()))
            self.chunks["record_id"].append(records.take(pa.array(record[lo:hi])))
            self.chunks["window_index"].append(pa.array(index[lo:hi].astype(np.int32)))
            self.chunks["offset"].append(pa.array(offset[lo:hi], pa.int64()))
            self.chunks["n_fraction"].append(pa.array(fraction[lo:hi].astype(np.float32)))

    def table(self) -> pa.Table:
        return pa.Table.from_pydict({name: pa.chunked_array(self.chunks[name], type=DNA_SCHEMA.field(name).type)
                                     for name in DNA_SCHEMA.names}, schema=DNA_SCHEMA)
