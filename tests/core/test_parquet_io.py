import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmhealth.core.parquet_io import read_metadata, row_group_rows, write_partitioned, write_table


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


def _column_chunks(path):
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}


def test_every_column_nested_or_not_gets_zstd_and_a_dictionary_by_default(tmp_path):
    table = pa.table({"input_ids": pa.array([[1, 2, 3]] * 50, pa.list_(pa.int32())), "record_id": ["r1"] * 50,
                      "geometry": pa.array([{"spacing": [0.7, 0.7]}] * 50)})
    write_table(table, tmp_path / "t.parquet", "tokenize")
    chunks = _column_chunks(tmp_path / "t.parquet")
    assert set(chunks) == {"input_ids.list.element", "record_id", "geometry.spacing.list.element"}
    assert all(c.compression == "ZSTD" and "RLE_DICTIONARY" in c.encodings for c in chunks.values())


def test_layout_stores_bulk_columns_raw_or_as_split_floats(tmp_path):
    table = pa.table({"sequence": ["ACGT" * 64] * 100, "record_id": ["r1"] * 100,
                      "hu": pa.array([np.linspace(-1000, 400, 64, dtype=np.float32)] * 100, pa.list_(pa.float32()))})
    write_table(table, tmp_path / "t.parquet", "ingest", layout={"sequence": "raw", "hu": "float_split"})
    chunks = _column_chunks(tmp_path / "t.parquet")
    assert chunks["sequence"].compression == "UNCOMPRESSED" and "RLE_DICTIONARY" not in chunks["sequence"].encodings
    assert chunks["hu.list.element"].compression == "ZSTD"
    assert "BYTE_STREAM_SPLIT" in chunks["hu.list.element"].encodings
    assert chunks["record_id"].compression == "ZSTD" and "RLE_DICTIONARY" in chunks["record_id"].encodings
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    with pytest.raises(ValueError, match="unknown column layout 'gzip'"):
        write_table(table, tmp_path / "u.parquet", "ingest", layout={"hu": "gzip"})
