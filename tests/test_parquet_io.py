import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from parquet_io import read_metadata, row_group_rows, write_partitioned, write_table


def test_metadata_carries_schema_version_stage_and_params(tmp_path):
    write_table(pa.table({"x": [1, 2]}), tmp_path / "a.parquet", "ingest", {"window": 256})
    meta = read_metadata(tmp_path / "a.parquet")
    assert meta == {"schema_version": "1", "stage": "ingest", "params": {"window": 256}}
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, then renamed


def test_row_groups_are_capped_in_bytes_for_wide_rows(tmp_path):
    wide = pa.table({"pixel_values": pa.array([np.zeros(3 * 64 * 64, np.float32)] * 3000,
                                              pa.list_(pa.float32()))})
    assert row_group_rows(wide) < 3000  # ~48 KB a row: far fewer than 8192 rows per group
    write_table(wide, tmp_path / "img.parquet", "tokenize")
    assert pq.ParquetFile(tmp_path / "img.parquet").metadata.num_row_groups > 1
    assert row_group_rows(pa.table({"x": list(range(10))})) == 8192


def test_partitioned_write_writes_every_part(tmp_path):
    table = pa.table({"subject_id": pa.array([1, 2, 3], pa.int64()), "k": pa.array([0, 0, 2], pa.int64())})
    paths = [tmp_path / f"part-{k}.parquet" for k in range(3)]
    write_partitioned(table, paths, "k", "ingest")
    assert [pq.read_table(p).num_rows for p in paths] == [2, 0, 1]
    assert pq.read_table(paths[1]).schema.names == ["subject_id"]


def test_raw_columns_are_stored_uncompressed_and_the_rest_with_zstd(tmp_path):
    table = pa.table({"sequence": ["ACGT" * 64] * 100, "record_id": ["r1"] * 100})
    write_table(table, tmp_path / "dna.parquet", "ingest", raw_columns=["sequence", "not_a_column"])
    group = pq.ParquetFile(tmp_path / "dna.parquet").metadata.row_group(0)
    codecs = {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}
    assert codecs == {"sequence": "UNCOMPRESSED", "record_id": "ZSTD"}
    assert "RLE_DICTIONARY" not in group.column(0).encodings  # no dictionary either: one value a window
    assert pq.read_table(tmp_path / "dna.parquet").equals(table)
