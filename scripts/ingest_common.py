"""What the three ingest stages share: input listing, checksums, quarantine rows, manifest and shard writing.

Every ingest stage counts records (a DICOM file, a FASTA record, a CSV row) as it goes and ends by calling
`write_ingest_outputs`, which refuses to write a manifest whose counts do not add up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from parquet_io import write_partitioned, write_table
from pseudonym import shard_of

log = logging.getLogger(__name__)

STAGE = "ingest"
QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("locator", pa.string()), ("reason", pa.string())])
SHARD_COLUMN = "_shard"


@dataclass(frozen=True)
class QuarantineRow:
    """One refused input: file relative to the input root, where in it (`line 3`, `record 2`, `file`), why."""

    source: str
    locator: str
    reason: str


@dataclass
class RecordCounts:
    """Record accounting of one modality: `records_in == records_out + records_quarantined` at the end."""

    records_in: int = 0
    records_out: int = 0
    records_quarantined: int = 0


def configure_logging() -> None:
    """INFO lines to stderr, which Snakemake redirects into the job's log."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def progress(iterable: Iterable[Any], desc: str, unit: str) -> Iterable[Any]:
    """tqdm progress on stderr, updated at most every 10 s so job logs stay short."""
    return tqdm(iterable, desc=desc, unit=unit, mininterval=10, file=sys.stderr)


def list_input_files(root: str | os.PathLike, accept: Callable[[Path], bool] | None = None) -> list[Path]:
    """Regular files under `root` at any depth (symlinked folders followed), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist or is not a folder")
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            if path.is_file() and (accept is None or accept(path)):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def relative_source(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """The quarantine/manifest name of an input file: its path relative to the input root, POSIX style."""
    return Path(path).relative_to(root).as_posix()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large inputs do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def input_checksums(paths: Iterable[Path], root: str | os.PathLike | None = None) -> dict[str, str]:
    """{name: sha256} for the manifest; names are relative to `root` when given, else as passed."""
    return {(relative_source(p, root) if root is not None else str(p)): sha256_file(p) for p in paths}


def strip_paths(message: str, *paths: str | os.PathLike) -> str:
    """Drop absolute input paths from a library's error message so reasons stay relative and short."""
    for path in paths:
        message = message.replace(str(Path(path).resolve()), "<input>").replace(str(path), "<input>")
    return " ".join(message.split())


def shard_ids(subject_ids: np.ndarray, shards: int) -> np.ndarray:
    """Shard of every row, computed by `pseudonym.shard_of` once per distinct subject."""
    if len(subject_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(subject_ids, return_inverse=True)
    per_subject = np.array([shard_of(int(s), shards) for s in unique], dtype=np.int64)
    return per_subject[inverse]


def part_paths(out_dir: str | os.PathLike, shards: int) -> list[Path]:
    """`part-<k>.parquet` for k in 0..shards-1, the fixed output names of an ingest stage."""
    return [Path(out_dir) / f"part-{k}.parquet" for k in range(shards)]


def quarantine_table(rows: Iterable[QuarantineRow]) -> pa.Table:
    """Quarantine rows as the schema'd table (an empty table keeps its columns)."""
    rows = list(rows)
    return pa.Table.from_pydict({"source": [r.source for r in rows], "locator": [r.locator for r in rows],
                                 "reason": [r.reason for r in rows]}, schema=QUARANTINE_SCHEMA)


def build_manifest(modality: str, counts: RecordCounts, rows_written: int, inputs: dict[str, str],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest dict; raises if the counts do not add up, because that is a bug, not bad input."""
    if counts.records_in != counts.records_out + counts.records_quarantined:
        raise RuntimeError(f"{modality}: record accounting broken: in={counts.records_in} "
                           f"out={counts.records_out} quarantined={counts.records_quarantined}")
    manifest = {"modality": modality, "records_in": counts.records_in, "records_out": counts.records_out,
                "records_quarantined": counts.records_quarantined, "rows_written": rows_written,
                "inputs": dict(sorted(inputs.items()))}
    manifest.update(extra or {})
    return manifest


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temp file + rename), like the Parquet outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_ingest_outputs(out_dir: str | os.PathLike, modality: str, table: pa.Table, shards: int,
                         quarantine: Iterable[QuarantineRow], counts: RecordCounts, inputs: dict[str, str],
                         params: dict[str, Any],
                         extra_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write part-<k>.parquet (every k), quarantine.parquet and manifest.json; return the manifest."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    manifest = build_manifest(modality, counts, table.num_rows, inputs, extra_manifest)
    params = {"modality": modality, "shards": shards, **params}
    shard = shard_ids(table.column("subject_id").to_numpy(), shards)
    with_shard = table.append_column(SHARD_COLUMN, pa.array(shard, type=pa.int64()))
    write_partitioned(with_shard, part_paths(out_dir, shards), SHARD_COLUMN, STAGE, params)
    write_table(quarantine_table(quarantine), Path(out_dir) / "quarantine.parquet", STAGE, params)
    write_json(manifest, Path(out_dir) / "manifest.json")
    log_summary(manifest)
    return manifest


def log_summary(manifest: dict[str, Any]) -> None:
    """One line of counts per modality: no identifiers, no file names."""
    log.info("ingest %s: records_in=%d records_out=%d records_quarantined=%d rows_written=%d inputs=%d",
             manifest["modality"], manifest["records_in"], manifest["records_out"],
             manifest["records_quarantined"], manifest["rows_written"], len(manifest["inputs"]))
