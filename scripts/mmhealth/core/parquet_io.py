"""Parquet reading and writing shared by every stage: schema version and stage parameters in file metadata."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
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


# How a bulk column is stored instead of the default (zstd, dictionary-encoded):
# raw: no codec and no dictionary, for nearly incompressible data (sequence bases) whose compression would
#   cost more time than the rest of its stage;
# float_split: byte-stream-split floats + zstd, no dictionary, for float arrays (HU pixels) on which a
#   dictionary always fails after costing its time, and plain zstd compresses the mantissas poorly.
LAYOUTS = ("raw", "float_split")


@lru_cache(maxsize=64)
def leaf_paths(schema: pa.Schema) -> dict[str, list[str]]:
    """Parquet column paths of each top-level field ('hu' -> ['hu.list.element']). Per-column writer options
    are keyed by these: a top-level name silently matches nothing for a nested column. Cached per schema
    (found by writing an empty table: ~1 ms)."""
    buffer = io.BytesIO()
    pq.write_table(schema.empty_table(), buffer)
    parquet = pq.ParquetFile(io.BytesIO(buffer.getvalue())).schema
    paths = [parquet.column(i).path for i in range(len(parquet))]
    return {name: [p for p in paths if p == name or p.startswith(f"{name}.")] for name in schema.names}


def writer_options(schema: pa.Schema, layout: Mapping[str, str]) -> dict[str, Any]:
    """pyarrow.parquet.write_table keywords: zstd and dictionaries, except the columns named in `layout`."""
    unknown = sorted(set(layout.values()) - set(LAYOUTS))
    if unknown:
        raise ValueError(f"unknown column layout {unknown[0]!r}: use one of {', '.join(LAYOUTS)}")
    compression, dictionary, encoding = {}, [], {}
    for name, paths in leaf_paths(schema.remove_metadata()).items():
        kind = layout.get(name)
        for path in paths:
            compression[path] = "none" if kind == "raw" else "zstd"
            if kind is None:
                dictionary.append(path)
            elif kind == "float_split":
                encoding[path] = "BYTE_STREAM_SPLIT"
    return {"compression": compression, "use_dictionary": dictionary, "column_encoding": encoding or None}


def write_table(table: pa.Table, path: str | os.PathLike, stage: str, params: dict[str, Any] | None = None,
                row_group_size: int | None = None, layout: Mapping[str, str] | None = None) -> None:
    """Write atomically (temp file + rename) so a killed job never leaves a half-written shard behind.
    Columns are zstd-compressed and dictionary-encoded, except those `layout` names (see LAYOUTS)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(with_metadata(table, stage, params), tmp, row_group_size=row_group_size or row_group_rows(table),
                   **writer_options(table.schema, layout or {}))
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
                      params: dict[str, Any] | None = None, layout: Mapping[str, str] | None = None) -> None:
    """Write table rows into len(paths) files by the integer `shard_column`; every file is written, even empty."""
    shard = table.column(shard_column)
    for k, path in enumerate(paths):
        whole = len(paths) == 1 and pc.all(pc.equal(shard, k)).as_py() is not False  # no copy through a filter
        part = (table if whole else table.filter(pc.equal(shard, k))).drop_columns([shard_column])
        write_table(part, path, stage, params, layout=layout)
