"""Leakage audit of the subject split: nothing of one subject, series or sequence may sit in two splits.

Four checks, each over pseudonyms only: a subject listed in more than one split; a record (DICOM series or
FASTA record) found under subjects of different splits; identical pixel data (SHA-256 of a series' `hu`
values in slice order) in different splits; identical sequences (SHA-256 of a record's windows joined in
window order) in different splits. The audit JSON holds the counts and the offending pseudonyms; with
`--on-leak fail` any leak ends the job with a non-zero exit after the JSON is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mmhealth.core.parquet_io import write_json

log = logging.getLogger("leakage_audit")

ON_LEAK = ("fail", "warn")


class LeakageError(SystemExit):
    """Raised (exit status 1) when the audit finds a leak and `--on-leak fail` is set."""


@dataclass
class Groups:
    """Records grouped by a key (record id or content hash): the subjects and records under each key."""

    subjects: dict[Any, set[int]] = field(default_factory=lambda: defaultdict(set))
    records: dict[Any, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, key: Any, subject_id: int, record_id: str) -> None:
        self.subjects[key].add(subject_id)
        self.records[key].add(record_id)


def _contents(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a list<float32> or string column: row i is bytes[offsets[i]:offsets[i + 1]]."""
    if pa.types.is_list(column.type):
        values = column.values.to_numpy(zero_copy_only=False)
        return column.offsets.to_numpy() * values.itemsize, values.view(np.uint8)
    offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset:column.offset + len(column) + 1]
    data = column.buffers()[2]
    return offsets, np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)


def scan_parts(paths: Sequence[str | os.PathLike], order: str, content: str, by_record: Groups,
               by_content: Groups) -> int:
    """Group every record of `paths` by id and by the SHA-256 of its `content` rows joined in `order`."""
    count = 0
    for path in tqdm(paths, desc=f"audit {content}", unit="part", mininterval=10, file=sys.stderr):
        table = pq.read_table(path, columns=["subject_id", "record_id", order, content])
        if not table.num_rows:
            continue
        table = table.sort_by([("record_id", "ascending"), ("subject_id", "ascending"),
                               (order, "ascending")]).combine_chunks()
        records = table.column("record_id").to_numpy(zero_copy_only=False)
        subjects = table.column("subject_id").to_numpy()
        offsets, data = _contents(table.column(content).chunk(0))
        changes = (records[1:] != records[:-1]) | (subjects[1:] != subjects[:-1])  # one group per record and subject
        starts = np.r_[0, np.flatnonzero(changes) + 1]
        for start, end in zip(starts, np.r_[starts[1:], len(records)], strict=True):
            digest = hashlib.sha256(data[offsets[start]:offsets[end]].tobytes()).hexdigest()
            by_record.add(records[start], int(subjects[start]), records[start])
            by_content.add(digest, int(subjects[start]), records[start])
            count += 1
    return count


def leaks(groups: Groups, split_of: dict[int, str]) -> dict[str, Any]:
    """Keys whose subjects fall in more than one split: counts and the offending pseudonyms."""
    subjects, records = set(), set()
    bad = 0
    for key, members in groups.subjects.items():
        splits = {split_of[s] for s in members if s in split_of}
        if len(splits) > 1:
            bad += 1
            subjects |= members
            records |= groups.records[key]
    return {"n": len(groups.subjects), "in_several_splits": bad,
            "offending_subject_ids": sorted(subjects), "offending_record_ids": sorted(records)}


def audit(subjects_path: str | os.PathLike, image_parts: Sequence[str | os.PathLike],
          dna_parts: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The audit report: one block per check, and `leak` True when any check found something."""
    subjects = pq.read_table(subjects_path, columns=["subject_id", "split"])
    splits_of: dict[int, set[str]] = defaultdict(set)
    for subject_id, split in zip(subjects.column("subject_id").to_pylist(), subjects.column("split").to_pylist(),
                                 strict=True):
        splits_of[subject_id].add(split)
    several = sorted(s for s, splits in splits_of.items() if len(splits) > 1)
    split_of = {s: next(iter(splits)) for s, splits in splits_of.items() if len(splits) == 1}
    by_record, pixels, sequences = Groups(), Groups(), Groups()
    n_series = scan_parts(image_parts, "slice_index", "hu", by_record, pixels)
    n_sequences = scan_parts(dna_parts, "window_index", "sequence", by_record, sequences)
    unsplit = sorted({s for members in by_record.subjects.values() for s in members} - splits_of.keys())
    report = {
        "subjects": {"n": len(splits_of), "in_several_splits": len(several), "offending_subject_ids": several},
        "records": leaks(by_record, split_of),
        "pixel_data": {**leaks(pixels, split_of), "series": n_series},
        "sequences": {**leaks(sequences, split_of), "records": n_sequences},
        "subjects_without_split": len(unsplit),
    }
    report["leak"] = bool(several) or any(report[k]["in_several_splits"] for k in
                                          ("records", "pixel_data", "sequences"))
    return report


def leak_message(report: dict[str, Any]) -> str:
    """One line naming what leaked, with counts (pseudonyms are in the JSON)."""
    parts = [f"{report[name]['in_several_splits']} {what}" for name, what in (
        ("subjects", "subjects"), ("records", "record ids"), ("pixel_data", "identical pixel data groups"),
        ("sequences", "identical sequence groups")) if report[name]["in_several_splits"]]
    return "leakage across splits: " + ", ".join(parts) + " in more than one split"


def offenders(report: dict[str, Any], limit: int = 20) -> list[str]:
    """One line per check that leaked: its kind of overlap and the first offending pseudonyms."""
    kinds = {"subjects": "subject listed in several splits", "records": "record id under subjects of several "
             "splits", "pixel_data": "identical pixel data in several splits", "sequences": "identical sequence "
             "in several splits"}
    lines = []
    for name, kind in kinds.items():
        block = report[name]
        if block["in_several_splits"]:
            subjects = block["offending_subject_ids"]
            records = block.get("offending_record_ids", [])
            more = f" (+{len(subjects) - limit} more)" if len(subjects) > limit else ""
            line = f"{name}: {kind}: subject_ids {subjects[:limit]}{more}"
            if records:
                line += f"; record_ids {records[:limit]}" + (f" (+{len(records) - limit} more)"
                                                             if len(records) > limit else "")
            lines.append(line)
    return lines


def run_audit(subjects_path: str | os.PathLike, image_parts: Sequence[str | os.PathLike],
              dna_parts: Sequence[str | os.PathLike], out: str | os.PathLike, on_leak: str = "fail",
              failed_out: str | os.PathLike | None = None) -> dict:
    """Write the audit JSON; raise LeakageError (exit 1) on a leak when `on_leak` is 'fail'.

    A failing audit also writes its report to `failed_out` (a path Snakemake does not delete with the failed
    job's outputs) and logs each leaking check with its kind of overlap and pseudonyms, so the findings
    survive the failure; a passing audit removes a stale `failed_out`.
    """
    if on_leak not in ON_LEAK:
        raise ValueError(f"on_leak must be one of {ON_LEAK}, got {on_leak!r}")
    report = {"on_leak": on_leak, **audit(subjects_path, image_parts, dna_parts)}
    write_json(report, out)
    if report["leak"]:
        message = leak_message(report)
        for line in offenders(report):
            log.warning("leak: %s", line)
        if on_leak == "fail":
            where = out
            if failed_out is not None:
                write_json(report, failed_out)
                where = failed_out
            raise LeakageError(f"{message}; the full report is in {where}")
        log.warning("%s; see %s", message, out)
    else:
        if failed_out is not None and os.path.exists(failed_out):
            os.remove(failed_out)
        log.info("leakage audit: no subject, record, pixel data or sequence in more than one split")
    return report
