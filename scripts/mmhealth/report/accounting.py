"""Data accounting a person reads: what went in, what came out, what was refused and why, what was used.

`data_accounting` gathers the counts of a finished run (no raw identifier: only counts, reasons and
pseudonymous tables are read) for `results/accounting.json`, which the report pages show. The console
summary at the end of a run (workflow/rules/report.smk, `onsuccess`/`onerror`) adds what only the person
running it may see: the raw ids of labels that match no ingested subject, read from their own label files.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmhealth.core.parquet_io import read_metadata, write_json

log = logging.getLogger("accounting")
TOP_REASONS = 5


def modality_accounting(manifest_path: Path, quarantine_path: Path) -> dict:
    """Records in / out / quarantined of one ingested modality, with its most frequent refusal reasons."""
    manifest = json.loads(Path(manifest_path).read_text())
    reasons = Counter(pq.read_table(quarantine_path, columns=["reason"]).column("reason").to_pylist())
    records_in = manifest["records_in"]
    return {"records_in": records_in, "records_out": manifest["records_out"],
            "records_quarantined": manifest["records_quarantined"],
            "quarantined_fraction": manifest["records_quarantined"] / records_in if records_in else 0.0,
            "top_reasons": [{"reason": r, "count": n} for r, n in reasons.most_common(TOP_REASONS)],
            "quarantine": str(quarantine_path)}


def task_accounting(labels_path: Path) -> dict:
    """Units and class counts per split of one task, and how many labels named no ingested subject."""
    table = pq.read_table(labels_path, columns=["label", "split"])
    per_split = {}
    for split in ("train", "val", "test"):
        labels = table.filter(pc.equal(table.column("split"), split)).column("label").to_pylist()
        per_split[split] = {"units": len(labels), "classes": dict(sorted(Counter(labels).items()))}
    params = read_metadata(labels_path).get("params", {})
    return {"splits": per_split, "labels_in": params.get("labels_in"), "labels_unused": params.get("unmatched")}


def data_accounting(manifests: dict[str, Path], quarantines: dict[str, Path], subjects: Path,
                    labels: dict[str, Path]) -> dict:
    split = pq.read_table(subjects, columns=["split"]).column("split").to_pylist()
    return {"modalities": {m: modality_accounting(manifests[m], quarantines[m]) for m in sorted(manifests)},
            "subjects": {s: split.count(s) for s in ("train", "val", "test")},
            "tasks": {t: task_accounting(labels[t]) for t in sorted(labels)}}


def write_accounting(manifests: dict[str, Path], quarantines: dict[str, Path], subjects: Path,
                     labels: dict[str, Path], out: Path) -> dict:
    accounting = data_accounting(manifests, quarantines, subjects, labels)
    write_json(accounting, out)
    log.info("%s", console_summary(accounting))
    return accounting


def console_summary(accounting: dict, unused_label_ids: dict[str, list[str]] | None = None) -> str:
    """The accounting as a few lines for the console; `unused_label_ids` (raw ids, console only) per task."""
    lines = ["Data accounting (records in = out + quarantined):"]
    for modality, entry in accounting.get("modalities", {}).items():
        lines.append(f"  {modality}: {entry['records_in']} in, {entry['records_out']} out, "
                     f"{entry['records_quarantined']} quarantined ({100 * entry['quarantined_fraction']:.1f}%)")
        lines += [f"      {r['count']} x {r['reason']}" for r in entry["top_reasons"]]
        if entry["records_quarantined"]:
            lines.append(f"      all refused records and reasons: {entry['quarantine']}")
    subjects = accounting.get("subjects", {})
    if subjects:
        lines.append("  subjects per split: " + ", ".join(f"{s} {n}" for s, n in subjects.items()))
    for task, entry in accounting.get("tasks", {}).items():
        counts = ", ".join(f"{s} {v['units']}" for s, v in entry["splits"].items())
        unused = entry.get("labels_unused") or 0
        lines.append(f"  task {task}: units {counts}; {unused} of {entry.get('labels_in')} labels match no data")
        ids = (unused_label_ids or {}).get(task)
        if ids:
            shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
            lines.append(f"      labels without data (raw ids, shown here only): {shown}")
    return "\n".join(lines)
