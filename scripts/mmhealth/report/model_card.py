"""A task's model card, structured by the TRIPOD+AI items that apply to a model evaluated on a held-out split:
`model_card.json` (machine-readable) and `model_card.md` (the same, for people), beside the task's page.

Everything comes from files the pipeline wrote: evaluation's metrics.json, the task's label table (split
counts and prevalence), the ingest manifests (records and a digest of the input checksums), the model
folder's own card and training log. No subject id, no date of a subject, no raw file name reaches it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq

from mmhealth.evaluate.metrics import json_safe
from mmhealth.report.html import format_estimate
from mmhealth.report.verdicts import BASELINE_RULE, verdict_line

LIBRARIES = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "snakemake")
INTENDED_USE = ("Research on data prepared by this workflow's ingest and tokenize stages, with the same tokenizers "
                "and pseudonym key: estimating the predictive value of the task's modalities in a cohort like the "
                "development cohort.")
OUT_OF_SCOPE = ("Clinical decisions about individual patients; any use as a medical device; populations, sites, "
                "scanners or coding practices unlike the development data without a new evaluation there; inputs "
                "not processed by this workflow.")


def split_counts(labels: Path, classes: list[str]) -> dict:
    """Per split: label units, subjects and the fraction of each class."""
    frame = pq.read_table(labels, columns=["subject_id", "label", "split"]).to_pandas()
    out = {}
    for split, rows in frame.groupby("split"):
        fractions = rows["label"].astype(str).value_counts(normalize=True)
        out[str(split)] = {"units": len(rows), "subjects": int(rows["subject_id"].nunique()),
                           "class_fractions": {c: float(fractions.get(c, 0.0)) for c in classes}}
    return out


def input_provenance(manifests: list[Path]) -> dict:
    """Per ingested modality: records in, out and refused, and one SHA-256 over its input checksums (a
    fingerprint of the exact exports, without their file names)."""
    out = {}
    for path in manifests:
        manifest = json.loads(Path(path).read_text())
        checksums = manifest.get("inputs") or {}
        digest = hashlib.sha256("\n".join(checksums[k] for k in sorted(checksums)).encode()).hexdigest()
        out[manifest.get("modality", Path(path).parent.name)] = {
            "records_in": manifest.get("records_in"), "records_out": manifest.get("records_out"),
            "records_quarantined": manifest.get("records_quarantined"), "input_files": len(checksums),
            "inputs_sha256": digest}
    return out


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def best_epoch(training_log: list[dict]) -> dict:
    rows = [r for r in training_log if r.get("val_loss") is not None]
    return min(rows, key=lambda r: r["val_loss"]) if rows else {}


def build_model_card(task: str, metrics: dict, labels: Path, manifests: list[Path], model_dir: Path,
                     training_log: list[dict]) -> dict:
    """The card as a dict (model_card.json)."""
    classes = metrics.get("classes") or []
    model_spec_path = Path(model_dir) / "mmhealth_model.json"
    spec = json.loads(model_spec_path.read_text()) if model_spec_path.exists() else {}
    calibration = metrics.get("calibration") or {}
    return {
        "standard": "TRIPOD+AI (items that apply to a model developed and evaluated on a held-out split)",
        "task": task,
        "generated_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "intended_use": INTENDED_USE,
        "out_of_scope": OUT_OF_SCOPE,
        "outcome": {"classes": classes, "unit": "record" if spec.get("record_level") else "subject"},
        "data": {"splits": split_counts(labels, classes), "split_rule": "subject-level: keyed pseudonym, no "
                 "subject in two splits", "inputs": input_provenance(manifests)},
        "predictors": {"modalities": spec.get("modalities", metrics.get("modalities")),
                       "preprocessing": "the pipeline's ingest (pseudonyms, date shifts, quarantine of bad "
                                        "records) and tokenize stages; tokenizers fitted on the train split"},
        "model": {"spec": spec, "best_epoch": best_epoch(training_log),
                  "training_card": "README.md"},
        "analysis": {"selection": "early stopping on validation loss",
                     "calibration": "temperature scaling fitted on validation",
                     "thresholds": "chosen on validation (Youden's J; sensitivity >= 0.9)",
                     "uncertainty": "95% percentile bootstrap CIs resampling subjects",
                     "comparison": "paired bootstrap CI and DeLong test against a logistic-regression baseline"},
        "performance": {"n_test": metrics.get("n_test"), "n_subjects_test": metrics.get("n_subjects_test"),
                        "model": metrics.get("model"), "baseline": metrics.get("baseline"),
                        "comparisons": metrics.get("comparisons"),
                        "verdict": verdict_line((metrics.get("comparisons") or {}).get("baseline")),
                        "verdict_rule": BASELINE_RULE},
        "calibration": {k: calibration.get(k) for k in ("temperature", "note", "val_nll", "before", "after")},
        "operating_points": metrics.get("operating_points"),
        "subgroups": metrics.get("subgroups"),
        "limitations": limitations(metrics),
        "software": library_versions(),
    }


def limitations(metrics: dict) -> list[str]:
    """Limits the numbers themselves show, plus the ones every such model has."""
    notes = ["Evaluated on one held-out split of one development cohort: no external validation."]
    n = metrics.get("n_subjects_test")
    if isinstance(n, int) and n < 100:
        notes.append(f"Only {n} test subjects: wide confidence intervals.")
    auroc = ((metrics.get("model") or {}).get("auroc") or {}).get("value")
    if auroc is not None and auroc >= 0.999:
        notes.append("Test AUROC near 1: check for label leakage or an outcome the inputs nearly encode.")
    flagged = [f"{a}={g['group']}" for a, groups in (metrics.get("subgroups") or {}).items() for g in groups
               if g.get("below_overall")]
    if flagged:
        notes.append(f"Subgroups with AUROC CI wholly below the overall AUROC: {', '.join(flagged)}.")
    if (metrics.get("calibration") or {}).get("note"):
        notes.append(f"Calibration: {metrics['calibration']['note']}.")
    return notes


def model_card_markdown(card: dict) -> str:
    """The card for people: one heading per TRIPOD+AI item that applies."""
    performance, calibration = card["performance"], card["calibration"]
    splits = card["data"]["splits"]
    lines = [f"# Model card: {card['task']}", "", f"Structured by {card['standard']}. Generated {card['generated_utc']}.",
             "", "## Intended use", card["intended_use"], "", "## Out of scope", card["out_of_scope"], "",
             "## Outcome", f"Classes {card['outcome']['classes']}, one prediction per {card['outcome']['unit']}.", "",
             "## Data source and participants", f"Split rule: {card['data']['split_rule']}.", "",
             "| split | units | subjects | class fractions |", "| --- | --- | --- | --- |"]
    for split in ("train", "val", "test"):
        if split in splits:
            s = splits[split]
            fractions = ", ".join(f"{c} {p:.3f}" for c, p in s["class_fractions"].items())
            lines.append(f"| {split} | {s['units']} | {s['subjects']} | {fractions} |")
    lines += ["", "Inputs (records in / out / refused; SHA-256 over the input checksums):", ""]
    for modality, m in card["data"]["inputs"].items():
        lines.append(f"- {modality}: {m['records_in']} / {m['records_out']} / {m['records_quarantined']}; "
                     f"`{m['inputs_sha256'][:16]}…`")
    lines += ["", "## Predictors", f"Modalities: {card['predictors']['modalities']}. "
              f"Preprocessing: {card['predictors']['preprocessing']}.", "",
              "## Model and training", f"Best epoch: {json.dumps(card['model']['best_epoch'])}. "
              f"Settings: see the model folder's {card['model']['training_card']}.", "",
              "## Analysis methods", *[f"- {k}: {v}" for k, v in card["analysis"].items()], "",
              "## Performance (test split)",
              f"{performance['n_test']} units from {performance['n_subjects_test']} subjects; 95% CIs.", "",
              "| metric | model | baseline |", "| --- | --- | --- |"]
    for metric in ("auroc", "auprc", "accuracy", "macro_f1", "brier", "ece"):
        lines.append(f"| {metric} | {format_estimate((performance.get('model') or {}).get(metric))} | "
                     f"{format_estimate((performance.get('baseline') or {}).get(metric))} |")
    lines += ["", performance["verdict"], "", performance["verdict_rule"], "", "## Calibration"]
    if calibration.get("temperature") is not None:
        lines.append(f"Temperature T = {calibration['temperature']:.3f} (fitted on validation)."
                     + (f" {calibration['note']}." if calibration.get("note") else ""))
        for key in ("ece", "brier", "slope", "intercept"):
            lines.append(f"- {key}: before {format_estimate((calibration.get('before') or {}).get(key))}, "
                         f"after {format_estimate((calibration.get('after') or {}).get(key))}")
    else:
        lines.append("Not fitted (no validation units).")
    lines += ["", "## Fairness: subgroups"]
    for attribute, groups in (card.get("subgroups") or {}).items():
        shown = [f"{g['group']}: {g.get('note') or format_estimate(g.get('auroc'))}" for g in groups]
        lines.append(f"- {attribute}: " + "; ".join(shown))
    lines += ["", "## Limitations", *[f"- {n}" for n in card["limitations"]], "",
              "## Software", ", ".join(f"{k} {v}" for k, v in card["software"].items()), ""]
    return "\n".join(lines)


def write_model_card(card: dict, out_json: Path, out_md: Path) -> None:
    Path(out_json).write_text(json.dumps(json_safe(card), indent=2, allow_nan=False) + "\n")
    Path(out_md).write_text(model_card_markdown(card), encoding="utf-8")
