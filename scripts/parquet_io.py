"""Parquet reading and writing shared by every stage: schema version and stage parameters in file metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
METADATA_KEY = b"mmhealth"
ROW_GROUP_SIZE = 8192
# Readers stream one row group at a time: cap its size in bytes too (image rows are ~50 KB each).
ROW_GROUP_BYTES = 64 * 2**20


def with_metadata(table: pa.Table, stage: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Attach schema version, producing stage and its parameters to the table's schema metadata."""
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(
        {"schema_version": SCHEMA_VERSION, "stage": stage, "params": params or {}}, sort_keys=True, default=str
    ).encode()
    return table.replace_schema_metadata(meta)


def row_group_rows(table: pa.Table, max_rows: int = ROW_GROUP_SIZE, max_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group: at most max_rows, and about max_bytes of uncompressed data."""
    if table.num_rows == 0:
        return max_rows
    bytes_per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(max_rows, max_bytes // bytes_per_row))


def write_table(table: pa.Table, path: str | os.PathLike, stage: str, params: dict[str, Any] | None = None,
                row_group_size: int | None = None, raw_columns: Sequence[str] = ()) -> None:
    """Write atomically (temp file + rename) so a killed job never leaves a half-written shard behind.

    Columns are zstd-compressed and dictionary-encoded, except `raw_columns`: bulk, nearly incompressible
    data (sequence bases, say) whose compression would cost more time than the rest of its stage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    raw = set(raw_columns) & set(table.column_names)
    pq.write_table(with_metadata(table, stage, params), tmp,
                   compression={name: "none" if name in raw else "zstd" for name in table.column_names},
                   use_dictionary=[name for name in table.column_names if name not in raw],
                   row_group_size=row_group_size or row_group_rows(table))
    os.replace(tmp, path)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temp file + rename), like the Parquet outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The mmhealth metadata block of a Parquet file written by `write_table`."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def read_tables(paths: Iterable[str | os.PathLike], columns: Sequence[str] | None = None) -> pa.Table:
    """Concatenate Parquet files with one schema (empty shards included)."""
    tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in paths]
    if not tables:
        raise ValueError("no Parquet files to read")
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")


def write_partitioned(table: pa.Table, paths: Sequence[str | os.PathLike], shard_column: str, stage: str,
                      params: dict[str, Any] | None = None, raw_columns: Sequence[str] = ()) -> None:
    """Write table rows into len(paths) files by the integer `shard_column`; every file is written, even empty."""
    shard = table.column(shard_column)
    for k, path in enumerate(paths):
        part = table.filter(pc.equal(shard, k)).drop_columns([shard_column])
        write_table(part, path, stage, params, raw_columns=raw_columns)
