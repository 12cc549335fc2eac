"""The streaming loader: every unit's rows exactly once per epoch, across loader workers and DDP ranks."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmhealth.core.parquet_io import write_table
from mmhealth.train import bags, stream


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three dna shards of subjects with 1-9 rows each (rows of a subject in one shard, interleaved with
    other subjects' rows), written in row groups of 4 rows; labels for all subjects."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(1)
    subjects = np.arange(100, 140)
    files, expected = [], {}
    for k in range(3):
        mine = subjects[subjects % 3 == k]
        rows = [(int(s), [2, int(s), 10 + j, 3]) for s in mine for j in range(int(rng.integers(1, 10)))]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        for s, ids in rows:
            expected.setdefault(s, []).append(ids)
        table = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                          "record_id": pa.array([None] * len(rows), pa.string()),
                          "input_ids": pa.array([r[1] for r in rows], pa.list_(pa.int32()))})
        files.append(root / f"shard-{k}.parquet")
        write_table(table, files[-1], "tokenize", {}, row_group_size=4)
    assert pq.ParquetFile(files[0]).num_row_groups > 2
    labels = pa.table({"subject_id": pa.array(subjects, pa.int64()),
                       "record_id": pa.array([None] * len(subjects), pa.string()),
                       "label": ["pos" if s % 2 else "neg" for s in subjects]})
    units, dropped = bags.build_units(labels, ["neg", "pos"], {"dna": bags.read_row_ids(files, "dna")},
                                      {"dna": files})
    assert dropped == 0
    return units, expected


def collect(batches):
    seen = []
    for batch in batches:
        ids = batch["inputs"]["dna"]["input_ids"]
        index = batch["inputs"]["dna"]["bag_index"]
        for position, unit in enumerate(batch["unit"].tolist()):
            rows = ids[index == position]
            seen.append((unit, sorted(tuple(r[r != 0].tolist()) for r in rows)))
    return seen


@pytest.mark.parametrize(("world", "workers", "train"), [(1, 1, False), (2, 3, True), (3, 2, False)])
def test_every_unit_once_per_epoch_across_workers_and_ranks(shards, world, workers, train):
    units, expected = shards
    seen = []
    for rank in range(world):
        s = stream.BagStream(units, 5, limit=100, train=train, seed=3, epoch=1, rank=rank, world=world,
                             workers=workers, shuffle_buffer=8)
        # Real worker processes for the workers; the same batches when built in this process.
        built = collect(stream.loader(s, workers, torch.device("cpu")))
        assert built == collect(s)
        seen += built
    counts = Counter(u for u, _ in seen)
    assert sorted(counts) == list(range(len(units))) and set(counts.values()) == {1}
    for u, rows in seen:
        assert rows == sorted(tuple(r) for r in expected[int(units.subject_id[u])])
        assert units.labels[u] == int(units.subject_id[u] % 2)


def test_training_order_is_shuffled_per_epoch_and_fixed_by_the_seed(shards):
    units, _ = shards
    def order(epoch, seed=0):
        return [u for u, _ in collect(stream.BagStream(units, 4, 2, train=True, seed=seed, epoch=epoch,
                                                       shuffle_buffer=8))]
    assert order(1) == order(1) and order(1) != order(2) and order(1) != sorted(order(1))
    assert sorted(order(1)) == sorted(order(2)) == list(range(len(units)))


def test_picked_rows_are_at_most_the_limit_and_evenly_spaced_at_inference(shards):
    units, _ = shards
    batch = next(iter(stream.BagStream(units, len(units), 3, train=False)))
    counts = torch.bincount(batch["inputs"]["dna"]["bag_index"], minlength=len(units))
    sizes = np.diff(units.bags["dna"].offsets)
    assert counts.tolist() == np.minimum(sizes, 3)[batch["unit"].numpy()].tolist()


def test_ddp_ranks_take_the_same_number_of_batches(shards):
    units, _ = shards
    steps = stream.batches_per_rank(units, np.arange(len(units)), 3, 2, 4)
    per_rank = [sum(1 for _ in stream.BagStream(units, 4, 2, train=True, rank=r, world=3, workers=2))
                for r in range(3)]
    assert steps == min(per_rank)
    full = [[b["units"] for b in stream.BagStream(units, 4, 2, train=True, rank=r, world=3, workers=2,
                                                  drop_last=True)] for r in range(3)]
    assert all(set(sizes) == {4} for sizes in full)
    assert stream.batches_per_rank(units, np.arange(len(units)), 3, 2, 4, drop_last=True) == min(map(len, full))
