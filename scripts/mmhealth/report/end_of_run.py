"""The summary printed at the end of a run, from whatever the run has written so far.

It runs inside the Snakemake process (workflow/rules/accounting.smk), after success or failure, so it
reads only files that exist, and it may name raw label ids: they reach the console of the person running
the workflow, never a file under results/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from mmhealth.core.pseudonym import load_or_create_salt, subject_pseudonym
from mmhealth.report.accounting import console_summary, modality_accounting, task_accounting
from mmhealth.split.task_labels import read_label_file


def unused_label_ids(labels_csv: Path, subjects: Path, key: bytes) -> list[str]:
    """Raw subject ids of a label file whose pseudonym no modality ingested."""
    raw = read_label_file(str(labels_csv))["subject_id"].str.strip()
    known = set(pq.read_table(subjects, columns=["subject_id"]).column("subject_id").to_pylist())
    return sorted({r for r in raw if subject_pseudonym(r, key) not in known})


def partial_accounting(results: Path, ingested: list[str], tasks: list[str]) -> dict:
    """The accounting of the files that exist (after a failure some stages have not run)."""
    accounting: dict = {"modalities": {}, "tasks": {}}
    for modality in ingested:
        manifest, quarantine = (results / "ingest" / modality / n for n in ("manifest.json", "quarantine.parquet"))
        if manifest.exists() and quarantine.exists():
            accounting["modalities"][modality] = modality_accounting(manifest, quarantine)
    for task in tasks:
        labels = results / "splits" / "labels" / f"{task}.parquet"
        if labels.exists():
            accounting["tasks"][task] = task_accounting(labels)
    return accounting


def end_of_run_summary(config: dict, results: Path, ingested: list[str], tasks: list[str],
                       failed: bool = False) -> str:
    """After a failure, only what this run's files say: an accounting.json left by an earlier run would
    point at tables the failed jobs' cleanup has just removed."""
    written = results / "accounting.json"
    accounting = (json.loads(written.read_text()) if written.exists() and not failed
                  else partial_accounting(results, ingested, tasks))
    subjects = results / "splits" / "subjects.parquet"
    unused = {}
    if subjects.exists() and Path(config["privacy"]["salt_file"]).exists():
        key = load_or_create_salt(config["privacy"]["salt_file"])
        unused = {t: unused_label_ids(Path(config["tasks"][t]["labels"]), subjects, key)
                  for t in tasks if t in accounting.get("tasks", {})}
    return console_summary(accounting, unused)
