"""Label units and their bags of model inputs, read from token shards.

A label unit is a subject (subject-level labels) or one record (record-level labels). Its bag in a modality
is every token row of that unit: the slices of a series, the windows of a FASTA record, the windows of a
subject's notes, the subject's EHR sequence. Encoders see rows; the classifier pools rows into one vector per
bag. Token columns are held as flat numpy arrays plus offsets, never as per-row Python objects.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from mmhealth.core.modalities import RECORD_MODALITIES, TOKEN_MODALITIES
from mmhealth.core.parquet_io import read_tables
from mmhealth.core.special_tokens import PAD_ID


@dataclass
class FlatColumn:
    """A list<> column as one values array and row offsets: row i is values[offsets[i]:offsets[i+1]]."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray) -> FlatColumn:
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if len(array) == 0:
            return cls(np.zeros(0, np.float32), np.zeros(1, np.int64))
        offsets = array.offsets.to_numpy().astype(np.int64)
        values = array.values.to_numpy(zero_copy_only=False)
        return cls(values[offsets[0]:offsets[-1]], offsets - offsets[0])

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class ModalityRows:
    """Token rows of one modality and split."""

    modality: str
    subject_id: np.ndarray
    record_id: np.ndarray
    data: FlatColumn
    image_shape: tuple[int, int, int] | None = None  # channels, height, width

    def __len__(self) -> int:
        return len(self.subject_id)


def load_modality_rows(paths: list[Path], modality: str) -> ModalityRows:
    """Every row of one modality's token shards (the files the job declares, in the order given)."""
    if not paths:
        raise FileNotFoundError(f"no {modality} token shards given")
    column = "input_ids" if modality in TOKEN_MODALITIES else "pixel_values"
    extra = [] if modality in TOKEN_MODALITIES else ["channels", "height", "width"]
    table = read_tables(paths, columns=["subject_id", "record_id", column, *extra])
    shape = None
    if extra and table.num_rows:
        shape = tuple(int(pc.max(table.column(c)).as_py()) for c in extra)
    return ModalityRows(
        modality=modality,
        subject_id=table.column("subject_id").to_numpy(),
        record_id=np.asarray(table.column("record_id").to_pylist(), dtype=object),
        data=FlatColumn.from_arrow(table.column(column)),
        image_shape=shape,
    )


@dataclass
class BagData:
    """Label units of one split with, per modality, the row indices of each unit's bag."""

    subject_id: np.ndarray  # per unit
    record_id: np.ndarray  # per unit, None for subject-level labels
    labels: np.ndarray  # per unit, class index
    rows: dict[str, ModalityRows]
    bags: dict[str, list[np.ndarray]]  # modality -> per unit row indices

    def __len__(self) -> int:
        return len(self.labels)


def _group_rows(keys: np.ndarray) -> dict:
    if len(keys) == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1], True])
    return {sorted_keys[a]: order[a:b] for a, b in itertools.pairwise(bounds)}


def build_bags(labels: pa.Table, classes: list[str], rows: dict[str, ModalityRows]) -> tuple[BagData, int]:
    """Bags for every labelled unit that has rows in at least one modality; returns (data, units dropped)."""
    subject = labels.column("subject_id").to_numpy()
    record = np.asarray(labels.column("record_id").to_pylist(), dtype=object)
    class_index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([class_index[v] for v in labels.column("label").to_pylist()], dtype=np.int64)
    by_subject = {m: _group_rows(r.subject_id) for m, r in rows.items()}
    by_record = {m: _group_rows(r.record_id.astype(str)) for m, r in rows.items() if m in RECORD_MODALITIES}
    empty = np.zeros(0, dtype=np.int64)
    bags: dict[str, list[np.ndarray]] = {m: [] for m in rows}
    for s, r in zip(subject, record, strict=True):
        for m in rows:
            if r is not None and m in by_record:
                bags[m].append(by_record[m].get(r, empty))
            else:
                bags[m].append(by_subject[m].get(s, empty))
    keep = np.asarray([any(len(bags[m][i]) for m in rows) for i in range(len(y))], dtype=bool)
    data = BagData(
        subject_id=subject[keep], record_id=record[keep], labels=y[keep], rows=rows,
        bags={m: [b for b, k in zip(bs, keep, strict=True) if k] for m, bs in bags.items()},
    )
    return data, int((~keep).sum())


def pick_rows(bag: np.ndarray, limit: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most `limit` rows of a bag: a random subset in training, evenly spaced ones otherwise."""
    if len(bag) <= limit:
        return bag
    if rng is not None:
        return np.sort(rng.choice(bag, size=limit, replace=False))
    return bag[np.linspace(0, len(bag) - 1, limit).round().astype(np.int64)]


def collate(data: BagData, units: np.ndarray, limit: int, rng: np.random.Generator | None = None) -> dict:
    """Tensors for a batch of units: per modality the stacked rows and, per row, the unit it belongs to."""
    batch: dict = {"labels": torch.as_tensor(data.labels[units]), "inputs": {}}
    for m, rows in data.rows.items():
        picked = [pick_rows(data.bags[m][u], limit, rng) for u in units]
        index = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        if len(index) == 0:
            continue
        bag_index = torch.as_tensor(np.repeat(np.arange(len(units)), [len(p) for p in picked]))
        if m in TOKEN_MODALITIES:
            seqs = [rows.data.row(i) for i in index]
            width = max(len(s) for s in seqs)
            ids = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
            for j, s in enumerate(seqs):
                ids[j, : len(s)] = s
            ids_t = torch.as_tensor(ids)
            batch["inputs"][m] = {"input_ids": ids_t, "attention_mask": (ids_t != PAD_ID).long(),
                                  "bag_index": bag_index}
        else:
            pixels = np.stack([rows.data.row(i) for i in index]).astype(np.float32)
            batch["inputs"][m] = {"pixel_values": torch.as_tensor(pixels.reshape(len(index), *rows.image_shape)),
                                  "bag_index": bag_index}
    return batch


def read_labels(path: str | Path, split: str | None = None) -> pa.Table:
    table = pq.read_table(path)
    return table if split is None else table.filter(pc.equal(table.column("split"), split))
