"""A task's label file (raw ids) -> labels on pseudonyms with each subject's split.

Label files carry the same raw ids as the inputs; this is the one place they meet the key, so labels never
reach results/ with a raw id. Labels of subjects that no modality ingested cannot be used and are counted.
"""

from __future__ import annotations

import logging

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmhealth.core.modalities import RECORD_KIND
from mmhealth.core.parquet_io import write_table
from mmhealth.core.pseudonym import record_pseudonym, subject_pseudonym
from mmhealth.ingest import ehr_csv

log = logging.getLogger("task_labels")



class LabelFileError(ValueError):
    """A label file that cannot be used as a whole."""


def read_label_file(path: str) -> pd.DataFrame:
    """The label table as text, read by the workflow's one CSV reader (byte-order mark, CRLF, quoted line
    breaks), as the parse-time stratification read it. Index + 2 is each row's line in the file."""
    try:
        header, rows = ehr_csv.read_csv(path, "utf-8")
        missing = {"subject_id", "label"} - set(header)
        if missing:
            raise LabelFileError(f"{path}: missing column(s) {sorted(missing)}; need subject_id, label [, record_id]")
        read = list(rows)
    except ehr_csv.CsvFileError as exc:
        raise LabelFileError(str(exc)) from None
    for row in read:
        if row.problems:
            raise LabelFileError(f"{path}: line {row.line}: {'; '.join(row.problems)}")
    return pd.DataFrame([row.cells for row in read], columns=header, index=[row.line - 2 for row in read],
                        dtype=str)


def pseudonymise_labels(frame: pd.DataFrame, key: bytes, modalities: list[str], source: str) -> pd.DataFrame:
    """Map raw subject (and record) ids to pseudonyms; rows with an empty id or label raise with their line."""
    for column in ("subject_id", "label"):
        empty = frame.index[frame[column].str.strip() == ""]
        if len(empty):
            raise LabelFileError(f"{source}: line {empty[0] + 2}: empty {column}")
    out = pd.DataFrame({
        "subject_id": [subject_pseudonym(s, key) for s in frame["subject_id"]],
        "label": frame["label"].str.strip(),
    })
    if "record_id" in frame.columns:
        kinds = {RECORD_KIND[m] for m in modalities if m in RECORD_KIND}
        if len(kinds) != 1:
            raise LabelFileError(f"{source}: record_id needs exactly one image or dna modality, task has {modalities}")
        kind = kinds.pop()
        out["record_id"] = [record_pseudonym(r, key, kind=kind) for r in frame["record_id"]]
    else:
        out["record_id"] = None
    if out.duplicated(["subject_id", "record_id"]).any():
        raise LabelFileError(f"{source}: the same subject/record is labelled more than once")
    return out


def attach_splits(labels: pd.DataFrame, subjects: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Inner join on subject_id; returns the joined labels and how many labels had no ingested subject."""
    joined = labels.merge(subjects, on="subject_id", how="inner")
    return joined, len(labels) - len(joined)


def small_classes(joined: pd.DataFrame, minimum: int) -> list[str]:
    """One line per split and class with fewer than `minimum` distinct subjects (classes of the task)."""
    counts = joined.groupby(["split", "label"])["subject_id"].nunique()
    problems = []
    for split in ("train", "val", "test"):
        for label in sorted(joined["label"].unique()):
            n = int(counts.get((split, label), 0))
            if n < minimum:
                problems.append(f"split '{split}' has {n} subject(s) of class '{label}'")
    return problems


def write_task_labels(labels_path: str, subjects_path: str, key: bytes, modalities: list[str], out: str,
                      min_subjects_per_class: int = 0, on_small_class: str = "warn") -> pa.Table:
    """The task's labels on pseudonyms, each with its subject's split; labels of subjects no modality
    ingested are counted and left out. A split holding fewer than `min_subjects_per_class` subjects of a
    class is reported (`on_small_class`: warn in the log, or fail): early stopping on a one-class
    validation split, or a test AUROC over a handful of subjects, means little."""
    labels = pseudonymise_labels(read_label_file(labels_path), key, modalities, labels_path)
    subjects = pq.read_table(subjects_path).to_pandas()
    joined, unmatched = attach_splits(labels, subjects)
    if unmatched:
        log.warning("%d of %d labels name a subject that no modality ingested; they are not used",
                    unmatched, len(labels))
    if joined["label"].nunique() < 2:
        raise LabelFileError(f"{labels_path}: fewer than two distinct labels among ingested subjects")
    small = small_classes(joined, min_subjects_per_class)
    if small:
        message = (f"{labels_path}: {'; '.join(small)} (config audit.min_subjects_per_class: "
                   f"{min_subjects_per_class}); add labelled subjects or change the split fractions")
        if on_small_class == "fail":
            raise LabelFileError(message)
        log.warning("%s", message)
    table = pa.Table.from_pandas(
        joined[["subject_id", "record_id", "label", "split"]].sort_values(["subject_id", "record_id"]),
        schema=pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()),
                          ("label", pa.string()), ("split", pa.string())]),
        preserve_index=False,
    )
    write_table(table, out, stage="task_labels",
                params={"modalities": modalities, "labels_in": len(labels), "unmatched": unmatched})
    log.info("%d labels: %s", table.num_rows, joined.groupby("split")["label"].value_counts().to_dict())
    return table
