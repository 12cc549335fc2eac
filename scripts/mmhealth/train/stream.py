"""The one loader of training, validation, evaluation and prediction: bags streamed from token shards.

Each unit's rows are picked before anything is read (a random subset of at most `limit` rows in training,
drawn from a generator seeded by (seed, epoch, unit); evenly spaced rows otherwise), then read in chunks of
units, a Parquet row group at a time and only the data column, keeping one decoded row group per modality.
Memory thus holds a chunk's picked rows, one row group per modality and the shuffle buffer's bags: it does
not grow with the number of rows of the split (the id index, 16 bytes a row, aside).

Partitioning: under DDP rank r takes every world-th unit of the (unshuffled) unit list; within a rank,
loader worker w takes the units whose home shard file f has f % workers == w, so a worker reads its own
files. Units of a worker are visited file by file (files in a per-epoch shuffled order in training), in
the order of their rows within a file, and in training pass through a bag-level shuffle buffer. Every unit of a rank is yielded exactly once per epoch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from mmhealth.core.modalities import TOKEN_MODALITIES
from mmhealth.core.special_tokens import PAD_ID
from mmhealth.train.bags import FlatColumn, Units, data_column, pick_rows

CHUNK_UNITS = 32  # units whose rows are read together
READ_ROWS = 64  # rows decoded at a time (64 CT slices of 3x64x64 float32: 3 MB)
Augment = Callable[[dict, np.random.Generator], None]  # changes a collated training batch in place


class RowReader:
    """Rows of one modality by row number across its shard files, decoded READ_ROWS rows at a time with a
    forward cursor: ascending requests scan each row group once, holding one small batch of rows (a whole
    row group of CT slices can be 64 MB)."""

    def __init__(self, files: list[Path], file_rows: np.ndarray, modality: str):
        self.files, self.column = files, data_column(modality)
        self.starts = np.cumsum(np.r_[0, file_rows]).astype(np.int64)
        self.meta: dict[int, tuple[pq.ParquetFile, np.ndarray]] = {}
        self.cursor: dict | None = None

    def _file(self, f: int) -> tuple[pq.ParquetFile, np.ndarray]:
        if f not in self.meta:
            self.meta.clear()  # one open file at a time
            # A buffered stream without pre-buffering: column chunks are read as their pages are decoded.
            handle = pq.ParquetFile(self.files[f], buffer_size=1 << 20, pre_buffer=False)
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
            self.meta[f] = (handle, np.cumsum(np.r_[0, sizes]).astype(np.int64))
        return self.meta[f]

    def _row(self, f: int, g: int, local: int) -> np.ndarray:
        c = self.cursor
        if c is None or (c["f"], c["g"]) != (f, g) or local < c["start"]:
            handle, _ = self._file(f)
            batches = handle.iter_batches(batch_size=READ_ROWS, row_groups=[g], columns=[self.column])
            c = self.cursor = {"f": f, "g": g, "batches": batches, "start": 0, "rows": None}
            c["rows"] = FlatColumn.from_arrow(next(batches).column(0))
        while local >= c["start"] + len(c["rows"].offsets) - 1:
            c["start"] += len(c["rows"].offsets) - 1
            c["rows"] = FlatColumn.from_arrow(next(c["batches"]).column(0))
        return c["rows"].row(local - c["start"]).copy()

    def rows(self, numbers: np.ndarray) -> list[np.ndarray]:
        """The rows with these numbers, as copies (ascending numbers read each row group once)."""
        out = []
        for n in numbers:
            f = int(np.searchsorted(self.starts, n, side="right") - 1)
            _, bounds = self._file(f)
            local = int(n - self.starts[f])
            g = int(np.searchsorted(bounds, local, side="right") - 1)
            out.append(self._row(f, g, local - int(bounds[g])))
        return out


def partition(units: Units, subset: np.ndarray, rank: int, world: int, workers: int) -> list[np.ndarray]:
    """Per loader worker, this rank's units of `subset` (see the module docstring)."""
    mine = subset[rank::world] if world > 1 else subset
    home = units.home_file()[mine]
    return [mine[home % workers == w] for w in range(workers)]


def batches_per_rank(units: Units, subset: np.ndarray, world: int, workers: int, batch_size: int,
                     drop_last: bool = False) -> int:
    """Batches the smallest rank gets in an epoch: the step count all DDP ranks can take together."""
    count = (lambda n: n // batch_size) if drop_last else (lambda n: math.ceil(n / batch_size))
    return min(sum(count(len(p)) for p in partition(units, subset, r, world, workers)) for r in range(world))


def collate_bags(bags: list[tuple[int, int, dict[str, list[np.ndarray]]]], image_shape) -> dict:
    """Tensors for a batch of (unit, label, rows per modality): per modality the stacked rows and, per
    row, the position of its unit in the batch; `unit` holds the units' indices."""
    batch: dict = {"labels": torch.as_tensor(np.asarray([b[1] for b in bags], dtype=np.int64)),
                   "unit": torch.as_tensor(np.asarray([b[0] for b in bags], dtype=np.int64)),
                   "units": len(bags), "inputs": {}}
    modalities = dict.fromkeys(m for b in bags for m in b[2])
    for m in modalities:
        picked = [b[2].get(m, []) for b in bags]
        seqs = [row for rows in picked for row in rows]
        if not seqs:
            continue
        bag_index = torch.as_tensor(np.repeat(np.arange(len(bags)), [len(p) for p in picked]))
        if m in TOKEN_MODALITIES:
            width = max(len(s) for s in seqs)
            ids = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
            for j, s in enumerate(seqs):
                ids[j, : len(s)] = s
            ids_t = torch.as_tensor(ids)
            batch["inputs"][m] = {"input_ids": ids_t, "attention_mask": (ids_t != PAD_ID).long(),
                                  "bag_index": bag_index}
        else:
            pixels = np.stack(seqs).astype(np.float32, copy=False)
            batch["inputs"][m] = {"pixel_values": torch.as_tensor(pixels.reshape(len(seqs), *image_shape)),
                                  "bag_index": bag_index}
    return batch


class BagStream(torch.utils.data.IterableDataset):
    """Batches of an epoch for one rank (see the module docstring). `train=False`: evenly spaced rows, no
    shuffling; `subset` restricts the units (default: all); `drop_last`: only full batches (under DDP, so
    that no rank meets a one-unit batch, which it would skip, while the others step)."""

    def __init__(self, units: Units, batch_size: int, limit: int, *, train: bool, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 1, shuffle_buffer: int = 0,
                 subset: np.ndarray | None = None, augment: Augment | None = None, drop_last: bool = False):
        super().__init__()
        self.units, self.batch_size, self.limit, self.train = units, batch_size, limit, train
        self.seed, self.epoch, self.rank, self.world, self.workers = seed, epoch, rank, world, max(1, workers)
        self.shuffle_buffer, self.augment, self.drop_last = shuffle_buffer if train else 0, augment, drop_last
        self.subset = np.arange(len(units)) if subset is None else np.asarray(subset, dtype=np.int64)
        self.home = units.home_file()
        self.first_row = units.first_row()

    def worker_units(self, worker: int) -> np.ndarray:
        """This worker's units in visiting order: by home file (files shuffled per epoch in training)."""
        mine = partition(self.units, self.subset, self.rank, self.world, self.workers)[worker]
        home = self.home[mine]
        files = np.unique(home)
        if self.train:
            files = np.random.default_rng([self.seed, self.epoch, 1]).permutation(files)
        rank_of_file = np.zeros(int(files.max()) + 1 if len(files) else 0, dtype=np.int64)
        rank_of_file[files] = np.arange(len(files))
        # Within a file, by first row: chunks then read the file forwards, each row group once.
        return mine[np.lexsort((self.first_row[mine], rank_of_file[home]))]

    def bags(self, order: np.ndarray) -> Iterator[tuple[int, int, dict[str, list[np.ndarray]]]]:
        readers = {m: RowReader(self.units.files[m], self.units.file_rows[m], m) for m in self.units.modalities}
        for start in range(0, len(order), CHUNK_UNITS):
            chunk = order[start:start + CHUNK_UNITS]
            picked = {}
            for u in chunk:
                rng = np.random.default_rng([self.seed, self.epoch, int(u)]) if self.train else None
                picked[int(u)] = {m: pick_rows(self.units.bag(m, int(u)), self.limit, rng)
                                  for m in self.units.modalities}
            data = {}
            for m, reader in readers.items():
                numbers = np.unique(np.concatenate([p[m] for p in picked.values()]))
                data[m] = dict(zip(numbers.tolist(), reader.rows(numbers), strict=True))
            for u in chunk:
                rows = {m: [data[m][n] for n in picked[int(u)][m].tolist()] for m in readers}
                yield int(u), int(self.units.labels[u]), {m: r for m, r in rows.items() if r}

    def shuffled(self, bags: Iterator, rng: np.random.Generator) -> Iterator:
        """A bag-level shuffle buffer: each bag leaves at a random time once the buffer is full."""
        if self.shuffle_buffer <= 1:
            yield from bags
            return
        buffer = []
        for bag in bags:
            buffer.append(bag)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(int(rng.integers(len(buffer))))
        rng.shuffle(buffer)
        yield from buffer

    def worker_batches(self, worker: int) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, self.epoch, 2, self.rank, worker])
        stream = self.shuffled(self.bags(self.worker_units(worker)), rng)
        for b in itertools.count():
            chosen = list(itertools.islice(stream, self.batch_size))
            if not chosen or (self.drop_last and len(chosen) < self.batch_size):
                return
            batch = collate_bags(chosen, self.units.image_shape)
            if self.augment is not None:
                self.augment(batch, np.random.default_rng([self.seed, self.epoch, 3, self.rank, worker, b]))
            yield batch

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        if info is None:  # no worker processes: this process builds the workers' batches in their order
            active = [self.worker_batches(w) for w in range(self.workers)]
            while active:  # round robin over the workers with batches left, as DataLoader takes them
                for batches in list(active):
                    batch = next(batches, None)
                    if batch is None:
                        active.remove(batches)
                    else:
                        yield batch
        else:
            yield from self.worker_batches(info.id)


def loader(stream: BagStream, processes: int, device: torch.device) -> torch.utils.data.DataLoader:
    """The stream built by `processes` loader workers (0: in this process), pinned for a GPU. The stream's
    partition count must be max(1, processes), so that batches do not depend on who builds them."""
    if stream.workers != max(1, processes):
        raise ValueError(f"a stream of {stream.workers} partitions cannot be built by {processes} workers")
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=processes, pin_memory=device.type == "cuda",
        prefetch_factor=4 if processes else None, persistent_workers=False,
        # Its own generator: a loader draws a base seed from the global torch RNG otherwise, and a resumed
        # epoch's loader would then shift the dropout masks of every later step.
        generator=torch.Generator().manual_seed(stream.seed * 100_003 + stream.epoch))
