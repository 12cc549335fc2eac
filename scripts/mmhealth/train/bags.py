"""Label units and where their bags of rows are in the token shards: ids only, never token or pixel data.

A label unit is a subject (subject-level labels) or one record (record-level labels). Its bag in a modality
is every token row of that unit: the slices of a series, the windows of a FASTA record, the windows of a
subject's notes, the subject's EHR sequence. Encoders see rows; the classifier pools rows into one vector per
bag. `Units` holds, per unit and modality, the row numbers of its bag (rows numbered across the modality's
shard files in the order given); `train.stream` reads the rows themselves, a few row groups at a time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmhealth.core.modalities import RECORD_MODALITIES, TOKEN_MODALITIES


def data_column(modality: str) -> str:
    return "input_ids" if modality in TOKEN_MODALITIES else "pixel_values"


@dataclass
class FlatColumn:
    """A list<> column as one values array and row offsets: row i is values[offsets[i]:offsets[i+1]]."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.Array) -> FlatColumn:
        array = column if isinstance(column, pa.Array) else (
            column.combine_chunks() if column.num_chunks != 1 else column.chunk(0))
        if len(array) == 0:
            return cls(np.zeros(0, np.float32), np.zeros(1, np.int64))
        offsets = array.offsets.to_numpy().astype(np.int64)
        values = array.values.to_numpy(zero_copy_only=False)
        return cls(values[offsets[0]:offsets[-1]], offsets - offsets[0])

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class ModalityRows:
    """Ids of the token rows of one modality and split (`data` None: the rows themselves are not read)."""

    modality: str
    subject_id: np.ndarray
    record_id: np.ndarray
    data: FlatColumn | None = None
    image_shape: tuple[int, int, int] | None = None  # channels, height, width
    file_rows: np.ndarray | None = None  # rows per shard file, in the order given

    def __len__(self) -> int:
        return len(self.subject_id)


def read_row_ids(paths: list[Path], modality: str) -> ModalityRows:
    """Subject and record id of every row of one modality's token shards (the files the job declares, in the
    order given), and the image shape; the token or pixel columns are not read."""
    if not paths:
        raise FileNotFoundError(f"no {modality} token shards given")
    extra = [] if modality in TOKEN_MODALITIES else ["channels", "height", "width"]
    subjects, records, shape, counts = [], [], None, []
    for path in paths:
        table = pq.read_table(path, columns=["subject_id", "record_id", *extra])
        subjects.append(table.column("subject_id").to_numpy())
        records.append(np.asarray(table.column("record_id").to_pylist(), dtype=object))
        counts.append(table.num_rows)
        if extra and table.num_rows:
            here = tuple(int(pc.max(table.column(c)).as_py()) for c in extra)
            shape = here if shape is None else tuple(max(a, b) for a, b in zip(shape, here, strict=True))
    return ModalityRows(modality=modality, subject_id=np.concatenate(subjects).astype(np.int64),
                        record_id=np.concatenate(records), image_shape=shape,
                        file_rows=np.asarray(counts, dtype=np.int64))


@dataclass
class Units:
    """Label units of one split with, per modality, the row numbers of each unit's bag."""

    subject_id: np.ndarray  # per unit
    record_id: np.ndarray  # per unit, None for subject-level labels
    labels: np.ndarray  # per unit, class index
    files: dict[str, list[Path]]  # modality -> token shard files
    file_rows: dict[str, np.ndarray]  # modality -> rows per file
    image_shape: tuple[int, int, int] | None
    bags: dict[str, FlatColumn]  # modality -> per unit its row numbers (sorted)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> list[str]:
        return list(self.bags)

    def bag(self, modality: str, unit: int) -> np.ndarray:
        return self.bags[modality].row(unit)

    def first_row(self) -> np.ndarray:
        """Per unit, its first row number in the first modality it has rows in."""
        first = np.full(len(self), -1, dtype=np.int64)
        for flat in self.bags.values():
            has = (np.diff(flat.offsets) > 0) & (first < 0)
            first[has] = flat.values[flat.offsets[:-1][has]]
        return first

    def home_file(self) -> np.ndarray:
        """Per unit, the shard file holding its first row (of the first modality it has rows in): units of
        one file go to one loader worker, which then reads that file alone."""
        home = np.full(len(self), -1, dtype=np.int64)
        for m, flat in self.bags.items():
            starts = np.cumsum(np.r_[0, self.file_rows[m]])
            has = (np.diff(flat.offsets) > 0) & (home < 0)
            first = flat.values[flat.offsets[:-1][has]]
            home[has] = np.searchsorted(starts, first, side="right") - 1
        return home


def _group_rows(keys: np.ndarray) -> dict:
    if len(keys) == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1], True])
    return {sorted_keys[a]: np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)}


def build_units(labels: pa.Table, classes: list[str], rows: dict[str, ModalityRows],
                files: dict[str, list[Path]]) -> tuple[Units, int]:
    """Units for every labelled unit that has rows in at least one modality; returns (units, units dropped)."""
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
    flat = {}
    for m, bs in bags.items():
        kept = [b for b, k in zip(bs, keep, strict=True) if k]
        flat[m] = FlatColumn(np.concatenate([empty, *kept]).astype(np.int64),
                             np.cumsum([0, *map(len, kept)]).astype(np.int64))
    shapes = [r.image_shape for r in rows.values() if r.image_shape is not None]
    units = Units(subject_id=subject[keep], record_id=record[keep], labels=y[keep],
                  files={m: [Path(p) for p in files[m]] for m in rows},
                  file_rows={m: r.file_rows for m, r in rows.items()},
                  image_shape=shapes[0] if shapes else None, bags=flat)
    return units, int((~keep).sum())


def pick_rows(bag: np.ndarray, limit: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most `limit` rows of a bag: a random subset in training, evenly spaced ones otherwise."""
    if len(bag) <= limit:
        return bag
    if rng is not None:
        return np.sort(rng.choice(bag, size=limit, replace=False))
    return bag[np.linspace(0, len(bag) - 1, limit).round().astype(np.int64)]


def read_labels(path: str | Path, split: str | None = None) -> pa.Table:
    table = pq.read_table(path)
    return table if split is None else table.filter(pc.equal(table.column("split"), split))
