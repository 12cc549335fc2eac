"""Lay the ingested EHR parts out as a MEDS 0.4 dataset folder (validated with `mmhealth.core.meds`).

It writes `OUT/data/<part>.parquet` (aligned copies, no symlinks), `OUT/metadata/codes.parquet`,
`OUT/metadata/subject_splits.parquet` (our splits renamed: train -> train, val -> tuning,
test -> held_out) and `OUT/metadata/dataset.json`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmhealth.core.meds import MEDS_VERSION, MedsValidationError, meds_package, validate_meds_events
from mmhealth.core.parquet_io import write_json, write_table

log = logging.getLogger("meds_layout")

SPLIT_NAMES = {"train": "train", "val": "tuning", "test": "held_out"}
STAGE = "meds_layout"


def code_metadata(data: pa.Table) -> pa.Table:
    """One row per distinct code: MEDS `CodeMetadataSchema` columns plus its event and subject counts."""
    if data.num_rows == 0:
        grouped = pa.table({"code": pa.array([], pa.string()), "subject_id_count": pa.array([], pa.int64()),
                            "subject_id_count_distinct": pa.array([], pa.int64())})
    else:
        grouped = data.group_by("code").aggregate([("subject_id", "count"),
                                                   ("subject_id", "count_distinct")]).sort_by("code")
    table = pa.table({
        "code": grouped.column("code").cast(pa.string()),
        "description": pa.nulls(grouped.num_rows, pa.string()),
        "parent_codes": pa.nulls(grouped.num_rows, pa.list_(pa.string())),
        "n_events": grouped.column("subject_id_count").cast(pa.int64()),
        "n_subjects": grouped.column("subject_id_count_distinct").cast(pa.int64()),
    })
    meds_package().CodeMetadataSchema.validate(table)
    return table


def subject_splits(subjects: pa.Table, data_subjects: np.ndarray) -> pa.Table:
    """MEDS subject splits of the subjects present in the data; every one of them must have a split."""
    known = dict(zip(subjects.column("subject_id").to_pylist(), subjects.column("split").to_pylist(),
                     strict=True))
    present = np.unique(data_subjects)
    missing = [s for s in present.tolist() if s not in known]
    if missing:
        raise ValueError(f"{len(missing)} subjects of the MEDS data have no split in the subjects file")
    unknown = sorted({known[s] for s in present.tolist()} - SPLIT_NAMES.keys())
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected {sorted(SPLIT_NAMES)}")
    table = pa.table({"subject_id": pa.array(present, pa.int64()),
                      "split": pa.array([SPLIT_NAMES[known[s]] for s in present.tolist()], pa.string())})
    meds_package().SubjectSplitSchema.validate(table)
    return table


def dataset_metadata() -> dict[str, Any]:
    """`metadata/dataset.json`, validated against MEDS `DatasetMetadataSchema`."""
    try:
        etl_version = importlib.metadata.version("mmhealth")
    except importlib.metadata.PackageNotFoundError:
        etl_version = "unknown"
    metadata = {"dataset_name": "mmhealth", "dataset_version": etl_version, "etl_name": "mmhealth",
                "etl_version": etl_version, "meds_version": MEDS_VERSION,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    meds_package().DatasetMetadataSchema.validate(metadata)
    return metadata


def write_meds_layout(parts: Sequence[str | os.PathLike], subjects_path: str | os.PathLike,
                      out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the MEDS folder from ingested EHR parts and our subject splits; return dataset.json."""
    out = Path(out_dir)
    names = [Path(p).name for p in parts]
    if len(set(names)) != len(names):
        raise ValueError("two parts share a file name; MEDS data files must have distinct names")
    tables = []
    for path, name in zip(parts, names, strict=True):
        table = validate_meds_events(pq.read_table(path).replace_schema_metadata(None))
        write_table(table, out / "data" / name, STAGE, {"source": name})
        tables.append(table)
    data = pa.concat_tables(tables) if tables else meds_package().DataSchema.align(pa.table({
        "subject_id": pa.array([], pa.int64()), "time": pa.array([], pa.timestamp("us")),
        "code": pa.array([], pa.string())}))
    subject_ids = data.column("subject_id").to_numpy()
    if len(np.unique(subject_ids)) != sum(len(np.unique(t.column("subject_id").to_numpy())) for t in tables):
        raise MedsValidationError("a subject appears in more than one data file")
    write_table(code_metadata(data), out / "metadata" / "codes.parquet", STAGE)
    splits = subject_splits(pq.read_table(subjects_path, columns=["subject_id", "split"]), subject_ids)
    write_table(splits, out / "metadata" / "subject_splits.parquet", STAGE)
    metadata = dataset_metadata()
    write_json(metadata, out / "metadata" / "dataset.json")
    log.info("MEDS layout: %d data files, %d events, %d codes, %d subjects", len(tables), data.num_rows,
             len(pc.unique(data.column("code"))), splits.num_rows)
    return metadata
