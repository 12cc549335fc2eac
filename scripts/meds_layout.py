"""MEDS 0.4: validate EHR event tables, and lay the ingested parts out as a MEDS dataset folder.

`validate_meds_events` checks a table against the `meds` package's own `DataSchema` (after one cast:
MEDS 0.4.1 types `text_value` as large_string, our Parquet schema as string) and the data properties the
schema cannot see: one subject's events are contiguous and sorted by time, static (null-time) events first.

The CLI writes `OUT/data/<part>.parquet` (aligned copies, no symlinks), `OUT/metadata/codes.parquet`,
`OUT/metadata/subject_splits.parquet` (our splits renamed: train -> train, val -> tuning,
test -> held_out) and `OUT/metadata/dataset.json`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from parquet_io import write_json, write_table

log = logging.getLogger("meds_layout")

MEDS_VERSION = "0.4.1"  # the `meds` package whose schemas are used (pyproject pins the same)
SPLIT_NAMES = {"train": "train", "val": "tuning", "test": "held_out"}
STAGE = "meds_layout"


class MedsValidationError(ValueError):
    """A table that is not valid MEDS data; the message says which rule it breaks."""


def _meds() -> Any:
    try:
        import meds
    except ImportError as exc:  # pragma: no cover - the environment pins it
        raise ImportError(f"the 'meds' package ({MEDS_VERSION}) is needed to validate MEDS data") from exc
    return meds


def validate_meds_events(table: pa.Table) -> pa.Table:
    """The table aligned to MEDS `DataSchema`; MedsValidationError when it is not valid MEDS data."""
    meds = _meds()
    aligned = table
    if "text_value" in table.column_names and table.schema.field("text_value").type == pa.string():
        # the one cast MEDS 0.4.1 needs from our schema; anything else must already be right
        index = table.column_names.index("text_value")
        aligned = table.set_column(index, "text_value", table.column(index).cast(pa.large_string()))
    try:
        meds.DataSchema.validate(aligned)
    except Exception as exc:
        raise MedsValidationError(f"not MEDS {MEDS_VERSION} data: {exc}") from None
    if table.num_rows == 0:
        return aligned
    subjects = table.column("subject_id").to_numpy()
    changes = np.flatnonzero(subjects[1:] != subjects[:-1]) + 1
    if len(np.unique(subjects[np.r_[0, changes]])) != len(changes) + 1:
        raise MedsValidationError("a subject's events are not contiguous")
    times = pc.fill_null(pc.cast(table.column("time"), pa.int64()), np.iinfo(np.int64).min).to_numpy()
    descending = np.flatnonzero((times[1:] < times[:-1]) & (subjects[1:] == subjects[:-1]))
    if len(descending):
        raise MedsValidationError(f"events of a subject are not sorted by time (row {descending[0] + 1}; "
                                  "static events must come first)")
    return aligned


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
    _meds().CodeMetadataSchema.validate(table)
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
    _meds().SubjectSplitSchema.validate(table)
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
    _meds().DatasetMetadataSchema.validate(metadata)
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
    data = pa.concat_tables(tables) if tables else _meds().DataSchema.align(pa.table({
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


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", required=True, help="results/ingest/ehr/part-*.parquet")
    parser.add_argument("--subjects", required=True, help="results/splits/subjects.parquet")
    parser.add_argument("--out-dir", required=True, help="results/meds")
    args = parser.parse_args(argv)
    write_meds_layout(args.parts, args.subjects, args.out_dir)


if __name__ == "__main__":
    main()
