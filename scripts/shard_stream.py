"""Stream token shards into model batches, one Parquet row group at a time.

`ShardStream` is a `torch.utils.data.IterableDataset` over `tokens/<modality>/<split>/shard-<k>.parquet`
files (workflow/schemas/parquet.md). Row groups are the unit of work: each consumer (a DataLoader worker of
a DDP rank) reads only its own row groups, so every row is seen exactly once per epoch across all consumers,
and memory holds one row group plus the optional shuffle buffer, never a whole split. It yields whole
batches, so use it with `DataLoader(stream, batch_size=None, num_workers=N)`.

Token modalities (an `input_ids` column) give `input_ids` padded with [PAD]=0 to the batch's longest row and
`attention_mask`; image gives `pixel_values` shaped (N, C, H, W) from the `channels`/`height`/`width` columns.
Numeric columns come back as torch tensors, string columns (`record_id`) as numpy object arrays of str.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger("shard_stream")

PAD_ID = 0
IMAGE_SHAPE_COLUMNS = ("channels", "height", "width")


@dataclass(frozen=True)
class RowGroup:
    """One row group of one shard file: the unit a consumer reads."""

    path: str
    index: int
    num_rows: int


def list_row_groups(paths: Sequence[str | os.PathLike], columns: Sequence[str]) -> list[RowGroup]:
    """Every non-empty row group of `paths`, in file order, from the footers only; a missing column raises
    naming the file."""
    groups = []
    for path in paths:
        meta = pq.read_metadata(path)
        missing = sorted(set(columns) - set(meta.schema.to_arrow_schema().names))
        if missing:
            raise ValueError(f"{path}: token shard has no column(s) {missing}")
        groups += [RowGroup(str(path), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)
                   if meta.row_group(i).num_rows > 0]
    return groups


def assign_row_groups(groups: Sequence[RowGroup], n_consumers: int,
                      order: np.ndarray | None = None) -> list[list[RowGroup]]:
    """Split row groups among consumers, each group to exactly one, balancing row counts (largest first).

    `order` (a permutation of the groups) changes which consumer reads what and in which order; every
    consumer must get the same `order` so the split stays a partition.
    """
    ordered = [groups[i] for i in (order if order is not None else range(len(groups)))]
    # Stable sort keeps `order` among equal sizes, so a shuffled order gives a different but balanced split.
    by_size = sorted(range(len(ordered)), key=lambda i: -ordered[i].num_rows)
    loads = np.zeros(n_consumers, dtype=np.int64)
    picked: list[list[int]] = [[] for _ in range(n_consumers)]
    for i in by_size:
        consumer = int(np.argmin(loads))
        loads[consumer] += ordered[i].num_rows
        picked[consumer].append(i)
    return [[ordered[i] for i in sorted(mine)] for mine in picked]


def list_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (a batch slice usually has a single chunk: no copy then)."""
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def padded_ids(column: pa.Array | pa.ChunkedArray, pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) as int64 arrays of shape (rows, longest row): ids padded with `pad_id`, mask 1 on real
    tokens. No per-row Python."""
    array = list_array(column)
    if array.null_count:
        array = pc.if_else(pc.is_null(array), pa.scalar([], array.type), array)
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets)
    values = array.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]] if len(array) else \
        np.zeros(0, np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    real = np.arange(width) < lengths[:, None]
    ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    ids[real] = values  # row-major boolean assignment lays each row's values out left-aligned
    mask = real.astype(np.int64)
    return ids, mask


def image_pixels(table: pa.Table) -> np.ndarray:
    """`pixel_values` as float32 (N, C, H, W); rows of different shapes in one batch raise."""
    shapes = np.stack([table.column(c).to_numpy() for c in IMAGE_SHAPE_COLUMNS], axis=1) if table.num_rows \
        else np.zeros((0, 3), np.int64)
    if len(shapes) and (shapes != shapes[0]).any():
        raise ValueError(f"image rows of different shapes in one batch: {np.unique(shapes, axis=0).tolist()}")
    channels, height, width = (int(v) for v in shapes[0]) if len(shapes) else (0, 0, 0)
    array = list_array(table.column("pixel_values"))
    offsets = array.offsets.to_numpy()
    # A writable copy: the values view would alias the row group's read-only buffer.
    values = np.array(array.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]], dtype=np.float32)
    if values.size != table.num_rows * channels * height * width:
        raise ValueError(f"pixel_values hold {values.size} values, expected {table.num_rows} x "
                         f"{channels}x{height}x{width}")
    return values.reshape(table.num_rows, channels, height, width)


def batch_arrays(table: pa.Table, columns: Sequence[str]) -> dict[str, torch.Tensor | np.ndarray]:
    """One batch as model inputs: `columns` of `table`, with input_ids padded (+ attention_mask) and
    pixel_values reshaped to (N, C, H, W); strings become numpy object arrays of str."""
    batch: dict[str, torch.Tensor | np.ndarray] = {}
    for name in columns:
        if name == "input_ids":
            ids, mask = padded_ids(table.column(name))
            batch["input_ids"], batch["attention_mask"] = torch.from_numpy(ids), torch.from_numpy(mask)
        elif name == "pixel_values":
            batch["pixel_values"] = torch.from_numpy(image_pixels(table))
        elif pa.types.is_string(table.schema.field(name).type) or pa.types.is_large_string(
                table.schema.field(name).type):
            batch[name] = table.column(name).to_numpy(zero_copy_only=False)
        else:
            batch[name] = torch.from_numpy(np.array(table.column(name).to_numpy()))  # writable copy
    return batch


def consumer_slot(rank: int, world_size: int) -> tuple[int, int]:
    """(this consumer's index, number of consumers) over DDP ranks x DataLoader workers."""
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return rank * workers + worker, world_size * workers


def distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit rank/world_size, else torch.distributed's when initialised, else (0, 1)."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


class ShardStream(IterableDataset):
    """Batches of `batch_rows` rows from token shards; see the module docstring.

    Exactly once per epoch: row groups are partitioned among rank x worker consumers (balanced by rows).
    With `shuffle_buffer > 0`, row-group order and rows are shuffled, seeded by (seed, epoch[, consumer]):
    call `set_epoch(e)` before each epoch's iteration (the DataLoader copies the dataset into its workers
    when an iterator starts, so do not use persistent_workers with shuffling). Consumers may get a
    different number of batches: a DDP loop must tolerate uneven inputs (e.g. torch's `Join`).
    `row_groups_read` counts reads in this process (workers count their own).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], columns: Sequence[str], batch_rows: int,
                 shuffle_buffer: int = 0, seed: int = 0, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.columns = list(columns)
        # The image shape columns are read even when not asked for: reshaping needs them.
        extra = [c for c in IMAGE_SHAPE_COLUMNS if "pixel_values" in self.columns and c not in self.columns]
        self.read_columns = self.columns + extra
        self.row_groups = list_row_groups(paths, self.read_columns)
        self.batch_rows, self.shuffle_buffer, self.seed = batch_rows, shuffle_buffer, seed
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self.epoch = 0
        self.row_groups_read = 0

    @property
    def num_rows(self) -> int:
        """Rows per epoch over all consumers."""
        return sum(group.num_rows for group in self.row_groups)

    def set_epoch(self, epoch: int) -> None:
        """Re-seed the shuffle for `epoch` (same seed and epoch give the same order)."""
        self.epoch = epoch

    def my_row_groups(self) -> list[RowGroup]:
        """The row groups this consumer (rank and DataLoader worker) reads this epoch, in reading order."""
        consumer, n_consumers = consumer_slot(self.rank, self.world_size)
        order = None
        if self.shuffle_buffer:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.row_groups))
        mine = assign_row_groups(self.row_groups, n_consumers, order)[consumer]
        if self.shuffle_buffer:
            np.random.default_rng([self.seed, self.epoch, consumer]).shuffle(mine)
        return mine

    def iter_tables(self) -> Iterator[pa.Table]:
        """This consumer's row groups, read one at a time with one file open at a time."""
        handle, handle_path = None, None
        for group in self.my_row_groups():
            if handle_path != group.path:
                if handle is not None:
                    handle.close()
                handle, handle_path = pq.ParquetFile(group.path), group.path
            table = handle.read_row_group(group.index, columns=self.read_columns)
            self.row_groups_read += 1
            yield table.replace_schema_metadata(None)
        if handle is not None:
            handle.close()

    def iter_row_tables(self) -> Iterator[pa.Table]:
        """Tables of exactly batch_rows rows (the last may be shorter), shuffled through the buffer if set."""
        consumer, _ = consumer_slot(self.rank, self.world_size)
        rng = np.random.default_rng([self.seed, self.epoch, consumer, 1])
        pending: pa.Table | None = None
        for table in self.iter_tables():
            pending = table if pending is None else pa.concat_tables([pending, table])
            keep = self.shuffle_buffer
            if keep:
                # A uniform random subset of buffer + new rows leaves; the rest stays in the buffer.
                pending = pending.take(pa.array(rng.permutation(pending.num_rows)))
            ready = (pending.num_rows - keep) // self.batch_rows * self.batch_rows
            for start in range(0, max(ready, 0), self.batch_rows):
                yield pending.slice(start, self.batch_rows)
            if ready > 0:
                pending = pending.slice(ready)
        if pending is not None and pending.num_rows:
            if self.shuffle_buffer:
                pending = pending.take(pa.array(rng.permutation(pending.num_rows)))
            for start in range(0, pending.num_rows, self.batch_rows):
                yield pending.slice(start, self.batch_rows)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | np.ndarray]]:
        for table in self.iter_row_tables():
            yield batch_arrays(table, self.columns)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stream token shards and report rows, batches and shapes.")
    parser.add_argument("shards", nargs="+", help="tokens/<modality>/<split>/shard-*.parquet")
    parser.add_argument("--columns", nargs="+", default=None,
                        help="columns to read (default: subject_id record_id and input_ids or pixel_values)")
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--shuffle-buffer", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    columns = args.columns
    if columns is None:
        names = pq.read_schema(args.shards[0]).names
        columns = ["subject_id", "record_id", "input_ids" if "input_ids" in names else "pixel_values"]
    stream = ShardStream([Path(p) for p in args.shards], columns, args.batch_rows, args.shuffle_buffer, args.seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.num_workers)
    rows = batches = 0
    shapes: set[tuple[int, ...]] = set()
    for batch in loader:
        rows += len(batch["subject_id"]) if "subject_id" in batch else len(next(iter(batch.values())))
        batches += 1
        shapes.update(tuple(v.shape[1:]) for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 1)
    log.info("%d rows in %d batches from %d row groups of %d file(s); tensor shapes (after N): %s",
             rows, batches, len(stream.row_groups), len(args.shards), sorted(shapes))
    if rows != stream.num_rows:
        raise RuntimeError(f"streamed {rows} rows, the shards hold {stream.num_rows}")


if __name__ == "__main__":
    main()
