"""ShardStream: exactly-once partitioning over DDP ranks x DataLoader workers, seeded shuffling, padding,
image reshaping and lazy row-group reading, on small token shards written here."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from parquet_io import write_table
from shard_stream import RowGroup, ShardStream, assign_row_groups, batch_arrays, padded_ids

TOKEN_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()), ("input_ids", pa.list_(pa.int32()))])
TOKEN_COLUMNS = ["subject_id", "record_id", "input_ids"]


def row_ids(n: int) -> list[int]:
    """Ids of row n: [CLS]=2, then 1..9 tokens that encode n, so a row's ids name its row."""
    return [2, *[5 + (n + j) % 50 for j in range((n % 9) + 1)]]


def write_token_shards(folder, rows_per_file: list[int], row_group_size: int) -> list:
    """One token shard per entry of rows_per_file; subject_id is the global row number."""
    paths, start = [], 0
    for k, n in enumerate(rows_per_file):
        numbers = list(range(start, start + n))
        table = pa.Table.from_pydict({"subject_id": numbers, "record_id": [f"r{i}" for i in numbers],
                                      "input_ids": [row_ids(i) for i in numbers]}, schema=TOKEN_SCHEMA)
        path = folder / f"shard-{k}.parquet"
        write_table(table, path, "tokenize", {"test": True}, row_group_size=row_group_size)
        paths.append(path)
        start += n
    return paths


def streamed_subjects(stream, num_workers: int = 0) -> list[int]:
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
    return [int(s) for batch in loader for s in batch["subject_id"]]


@pytest.fixture
def shards(tmp_path):
    # Uneven files, one empty, row groups of 16 rows: 15 non-empty row groups, 221 rows.
    return write_token_shards(tmp_path, [70, 0, 33, 118], row_group_size=16)


def test_every_row_once_across_two_ranks_with_two_workers_each(shards):
    seen = []
    for rank in range(2):
        stream = ShardStream(shards, TOKEN_COLUMNS, batch_rows=8, rank=rank, world_size=2)
        mine = streamed_subjects(stream, num_workers=2)
        assert mine, f"rank {rank} got no rows"
        seen += mine
    assert sorted(seen) == list(range(221))


def test_every_row_once_when_shuffled_and_epochs_differ(shards):
    orders = {}
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            stream = ShardStream(shards, TOKEN_COLUMNS, batch_rows=8, shuffle_buffer=40, seed=3, rank=rank,
                                 world_size=2)
            stream.set_epoch(epoch)  # the DataLoader copies the dataset into its workers at iter()
            seen += streamed_subjects(stream, num_workers=2)
        assert sorted(seen) == list(range(221))
        orders[epoch] = seen
    assert orders[0] != orders[1]


def ddp_rank_subjects(rank: int, world_size: int, init_file: str, shards: list, queue) -> None:
    """One DDP rank: ShardStream takes rank and world size from the initialised process group."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        stream = ShardStream(shards, TOKEN_COLUMNS, batch_rows=8)
        queue.put((rank, stream.rank, stream.world_size, streamed_subjects(stream)))
    finally:
        torch.distributed.destroy_process_group()


def test_rank_and_world_size_default_from_torch_distributed(shards, tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    ranks = [context.Process(target=ddp_rank_subjects, args=(r, 2, str(tmp_path / "pg"), shards, queue))
             for r in range(2)]
    for process in ranks:
        process.start()
    results = sorted(queue.get(timeout=60) for _ in ranks)
    for process in ranks:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert [(r, rank, world) for r, rank, world, _ in results] == [(0, 0, 2), (1, 1, 2)]
    assert all(subjects for *_, subjects in results)
    assert sorted(s for *_, subjects in results for s in subjects) == list(range(221))


def test_shuffle_is_deterministic_per_seed_and_epoch(shards):
    def order(seed: int, epoch: int) -> list[int]:
        stream = ShardStream(shards, TOKEN_COLUMNS, batch_rows=10, shuffle_buffer=50, seed=seed)
        stream.set_epoch(epoch)
        return streamed_subjects(stream)

    first = order(7, 0)
    assert first == order(7, 0)
    assert sorted(first) == list(range(221))
    assert first != list(range(221))
    assert order(7, 1) != first
    assert order(8, 0) != first
    # Row-level, not only row-group-level: neighbours in the output come from many row groups.
    assert len({s // 16 for s in first[:10]}) > 2


def test_unshuffled_stream_keeps_file_order_and_full_batches(shards):
    stream = ShardStream(shards, TOKEN_COLUMNS, batch_rows=32)
    sizes = [len(batch["subject_id"]) for batch in stream]
    assert sizes == [32] * 6 + [221 - 6 * 32]  # batches span row groups and files
    assert streamed_subjects(stream) == list(range(221))


def test_rows_stay_aligned_and_padded(shards):
    stream = ShardStream(shards, TOKEN_COLUMNS, batch_rows=12, shuffle_buffer=30, seed=1)
    for batch in stream:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.dtype == torch.int64 and ids.shape == mask.shape
        assert ids.shape[1] == int(mask.sum(1).max())  # padded to the batch's longest row, no further
        for row, subject in enumerate(batch["subject_id"].tolist()):
            expected = row_ids(subject)
            assert batch["record_id"][row] == f"r{subject}"
            assert ids[row, :len(expected)].tolist() == expected
            assert mask[row].tolist() == [1] * len(expected) + [0] * (ids.shape[1] - len(expected))
            assert (ids[row, len(expected):] == 0).all()


def test_padded_ids_exact():
    column = pa.chunked_array([pa.array([[2, 7, 3], [2, 3]], pa.list_(pa.int32())),
                               pa.array([[2, 9, 9, 9, 3], []], pa.list_(pa.int32()))])
    ids, mask = padded_ids(column.slice(1))  # a sliced, chunked column: offsets must be honoured
    assert ids.tolist() == [[2, 3, 0, 0, 0], [2, 9, 9, 9, 3], [0, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]
    with_null, _ = padded_ids(pa.array([[2, 3], None, [2, 8, 3]], pa.list_(pa.int32())))
    assert with_null.tolist() == [[2, 3, 0], [0, 0, 0], [2, 8, 3]]


def test_image_batches_are_n_c_h_w(tmp_path):
    n, c, h, w = 10, 3, 4, 5
    pixels = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
    table = pa.table({"subject_id": pa.array(range(n), pa.int64()), "record_id": [f"s{i}" for i in range(n)],
                      "pixel_values": pa.array(list(pixels.reshape(n, -1)), pa.list_(pa.float32())),
                      "channels": pa.array([c] * n, pa.int32()), "height": pa.array([h] * n, pa.int32()),
                      "width": pa.array([w] * n, pa.int32())})
    path = tmp_path / "shard-0.parquet"
    write_table(table, path, "tokenize", row_group_size=4)
    batches = list(ShardStream([path], ["subject_id", "pixel_values"], batch_rows=6))
    assert [tuple(b["pixel_values"].shape) for b in batches] == [(6, c, h, w), (4, c, h, w)]
    got = torch.cat([b["pixel_values"] for b in batches]).numpy()
    np.testing.assert_array_equal(got, pixels)
    assert "channels" not in batches[0]  # read for reshaping, not returned unless asked for

    mixed = table.set_column(4, "height", pa.array([h] * (n - 1) + [h + 1], pa.int32()))
    with pytest.raises(ValueError, match="different shapes"):
        batch_arrays(mixed, ["pixel_values"])


def test_reads_row_groups_lazily(tmp_path):
    # 60 row groups of 100 rows x 64 ids; the first batch must not read the file.
    n = 6000
    table = pa.table({"subject_id": pa.array(range(n), pa.int64()), "record_id": ["r"] * n,
                      "input_ids": pa.array(list(np.ones((n, 64), np.int32)), pa.list_(pa.int32()))})
    path = tmp_path / "shard-0.parquet"
    write_table(table, path, "tokenize", row_group_size=100)
    stream = ShardStream([path], TOKEN_COLUMNS, batch_rows=50)
    assert len(stream.row_groups) == 60 and stream.row_groups_read == 0  # footers only
    before = pa.total_allocated_bytes()
    batches = iter(stream)
    next(batches)
    assert stream.row_groups_read == 1
    assert pa.total_allocated_bytes() - before < table.nbytes / 10
    shuffled = ShardStream([path], TOKEN_COLUMNS, batch_rows=50, shuffle_buffer=250)
    next(iter(shuffled))
    assert shuffled.row_groups_read == 3  # buffer (250) + one batch (50) of rows, in 100-row groups
    for _ in batches:
        pass
    assert stream.row_groups_read == 60


def test_assign_row_groups_partitions_and_balances():
    groups = [RowGroup("a", i, size) for i, size in enumerate([100, 100, 100, 100, 10, 10, 10, 10, 50, 50])]
    parts = assign_row_groups(groups, 3, order=np.random.default_rng(0).permutation(len(groups)))
    assert sorted(g.index for part in parts for g in part) == list(range(10))
    loads = [sum(g.num_rows for g in part) for part in parts]
    assert max(loads) - min(loads) <= 30
    assert assign_row_groups(groups, 3) == assign_row_groups(groups, 3)


def test_bad_arguments_raise_clearly(shards):
    with pytest.raises(ValueError, match=r"shard-0\.parquet.*pixel_values"):
        ShardStream(shards, ["subject_id", "pixel_values"], batch_rows=4)
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        ShardStream(shards, TOKEN_COLUMNS, batch_rows=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_rows"):
        ShardStream(shards, TOKEN_COLUMNS, batch_rows=0)
