"""One task's evaluation report: a self-contained HTML page (figures inlined as PNG), no subject ids in it.

Rendering only: every number with a confidence interval comes from evaluation's metrics.json; the curves are
drawn from the test predictions it wrote.
"""

from __future__ import annotations

import json
import logging
from html import escape
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; set before any figure exists
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_curve, roc_curve

from mmhealth.evaluate.metrics import (
    METRICS,
    calibration_curve,
    prediction_arrays,
)
from mmhealth.report.html import figure_html, format_estimate, html_page, html_table

log = logging.getLogger("report_task")

METRIC_TITLES = {"auroc": "AUROC", "auprc": "AUPRC", "accuracy": "Accuracy", "macro_f1": "Macro F1",
                 "brier": "Brier score (lower is better)", "ece": "ECE (lower is better)"}


def headline_section(metrics: dict) -> str:
    model, baseline = metrics.get("model", {}), metrics.get("baseline") or {}
    baseline_title = f"Baseline: {baseline.get('name', 'none')}"
    rows = [[METRIC_TITLES[m], format_estimate(model.get(m)), format_estimate(baseline.get(m))] for m in METRICS]
    counts = (f"Test set: {metrics.get('n_test', 'n/a')} label units from "
              f"{metrics.get('n_subjects_test', 'n/a')} subjects. Brackets: 95% bootstrap confidence interval.")
    return ("<h2 id=\"headline\">Headline metrics</h2>\n"
            f"<p>{escape(counts)}</p>\n<p>Baseline: {escape(baseline.get('description', 'none'))}.</p>\n"
            + html_table(["Metric", "Model", baseline_title], rows))


def classification_section(y: np.ndarray, predicted: np.ndarray, classes: list[str]) -> str:
    report = classification_report(y, predicted, labels=list(range(len(classes))), target_names=classes,
                                   output_dict=True, zero_division=0)
    rows = []
    for name, entry in report.items():
        if isinstance(entry, dict):
            rows.append([name, f"{entry['precision']:.3f}", f"{entry['recall']:.3f}", f"{entry['f1-score']:.3f}",
                         int(entry["support"])])
        else:  # 'accuracy' is a bare number
            rows.append([name, "", "", f"{entry:.3f}", len(y)])
    return ("<h2 id=\"classification-report\">Classification report</h2>\n"
            + html_table(["Class", "Precision", "Recall", "F1", "Support"], rows))


def _curves(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, is-positive, score) per one-vs-rest problem: the positive class if binary, else each class."""
    targets = [1] if len(classes) == 2 else range(len(classes))
    return [(classes[c], y == c, prob[:, c]) for c in targets if 0 < (y == c).sum() < len(y)]


def roc_pr_section(y: np.ndarray, prob: np.ndarray, classes: list[str],
                   baseline: tuple[np.ndarray, np.ndarray] | None) -> str:
    runs = [("model", y, prob)] + ([("baseline", *baseline)] if baseline else [])
    roc, pr = Figure(figsize=(5, 4.5)), Figure(figsize=(5, 4.5))
    roc_ax, pr_ax = roc.subplots(), pr.subplots()
    drawn = 0
    for run, run_y, run_prob in runs:
        style = "-" if run == "model" else "--"
        for name, positive, score in _curves(run_y, run_prob, classes):
            fpr, tpr, _ = roc_curve(positive, score)
            precision, recall, _ = precision_recall_curve(positive, score)
            roc_ax.plot(fpr, tpr, style, label=f"{run}: {name}")
            pr_ax.step(recall, precision, style, where="post", label=f"{run}: {name}")
            drawn += 1
    roc_ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    roc_ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (one-vs-rest)")
    pr_ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall", ylim=(0, 1.02))
    roc_ax.legend(fontsize=7, loc="lower right")
    if drawn:
        pr_ax.legend(fontsize=7, loc="lower left")
    note = "" if drawn else "<p class=\"note\">The test set holds a single class: no curve is defined.</p>"
    return ("<h2 id=\"roc\">ROC curve</h2>\n" + note + figure_html(roc, "ROC curve")
            + "\n<h2 id=\"pr\">Precision-recall curve</h2>\n" + figure_html(pr, "Precision-recall curve"))


def calibration_section(y: np.ndarray, prob: np.ndarray, baseline: tuple[np.ndarray, np.ndarray] | None) -> str:
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for run, (run_y, run_prob) in [("model", (y, prob))] + ([("baseline", baseline)] if baseline else []):
        curve = calibration_curve(run_y, run_prob)
        sizes = 10 + 90 * np.asarray(curve["count"]) / max(curve["count"])
        ax.plot(curve["predicted"], curve["observed"], "-" if run == "model" else "--", label=run)
        ax.scatter(curve["predicted"], curve["observed"], s=sizes)
    binary = prob.shape[1] == 2
    ax.set(xlabel="Predicted probability of the positive class" if binary else "Confidence (max probability)",
           ylabel="Observed frequency" if binary else "Accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability (10 equal-width bins; marker size = rows)")
    ax.legend(fontsize=8)
    return "<h2 id=\"calibration\">Calibration</h2>\n" + figure_html(fig, "Reliability plot")


def confusion_section(y: np.ndarray, predicted: np.ndarray, classes: list[str]) -> str:
    matrix = confusion_matrix(y, predicted, labels=list(range(len(classes))))
    size = 3 + 0.5 * len(classes)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = list(range(len(classes)))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="Predicted", ylabel="True", title="Confusion matrix (counts)")
    for i in ticks:
        for j in ticks:
            dark = matrix[i, j] > matrix.max() / 2
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if dark else "black")
    rows = [[classes[i], *matrix[i].tolist()] for i in ticks]
    return ("<h2 id=\"confusion\">Confusion matrix</h2>\n" + figure_html(fig, "Confusion matrix")
            + html_table(["True \\ predicted", *classes], rows))


def subgroup_section(subgroups: dict, classes: list[str]) -> str:
    """Tables of the per-group metrics evaluation computed (metrics.json `subgroups`)."""
    head = "<h2 id=\"subgroups\">Subgroups</h2>\n"
    if not subgroups:
        return head + "<p class=\"note\">No subgroup attributes were given.</p>"
    prevalence = f"Prevalence of {classes[1]}" if len(classes) == 2 else "Class fractions"
    parts = [head]
    for attribute, groups in subgroups.items():
        rows = []
        for g in groups:
            fractions = g["class_fractions"]
            shown = (f"{fractions[1]:.3f}" if len(classes) == 2
                     else ", ".join(f"{c} {p:.2f}" for c, p in zip(classes, fractions, strict=True)))
            auroc = "n/a" if g["auroc"] is None else f"{g['auroc']:.3f}"
            rows.append([g["group"], str(g["n"]), str(g["subjects"]), shown, auroc, f"{g['accuracy']:.3f}"])
        parts.append(f"<h3>{escape(str(attribute))}</h3>\n"
                     + html_table(["Group", "n", "Subjects", prevalence, "AUROC", "Accuracy"], rows))
    return "\n".join(parts)


def training_section(training_log: list[dict] | None) -> str:
    head = "<h2 id=\"training\">Training curves</h2>\n"
    frame = pd.DataFrame(training_log or [])
    if frame.empty or "epoch" not in frame:
        return head + "<p class=\"note\">No training log was given.</p>"
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for column in ("train_loss", "val_loss"):
        if column in frame:
            ax.plot(frame["epoch"], frame[column], marker="o", label=column.replace("_", " "))
    ax.set(xlabel="Epoch", ylabel="Loss", title="Training curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = ax.get_legend_handles_labels()
    if "val_auroc" in frame and frame["val_auroc"].notna().any():
        twin = ax.twinx()
        twin.plot(frame["epoch"], frame["val_auroc"], "s--", color="tab:green", label="val AUROC")
        twin.set(ylabel="Validation AUROC", ylim=(0, 1))
        more_handles, more_names = twin.get_legend_handles_labels()
        handles, names = handles + more_handles, names + more_names
    ax.legend(handles, names, fontsize=8)
    shown = [c for c in ("epoch", "train_loss", "val_loss", "val_auroc") if c in frame]
    rows = [[f"{v:.4f}" if isinstance(v, float) else v for v in row] for row in frame[shown].itertuples(index=False)]
    return head + figure_html(fig, "Training curves") + html_table(shown, rows)


def write_task_report(task: str, metrics: dict, predictions: pd.DataFrame, classes: list[str], out_html: Path,
                      training_log: list[dict] | None = None,
                      baseline_predictions: pd.DataFrame | None = None) -> None:
    """Write the task's HTML report: headline table, classification report, ROC, PR, calibration, confusion
    matrix, subgroups and training curves. Only aggregates reach the page, never a subject id."""
    if predictions.empty:
        raise ValueError(f"task {task}: no test predictions to report on")
    y, prob, _ = prediction_arrays(predictions, classes)
    predicted = prob.argmax(axis=1)
    baseline = prediction_arrays(baseline_predictions, classes)[:2] if baseline_predictions is not None else None
    body = [
        f"<h1>Task {escape(task)}</h1>",
        f"<p>Classes: {escape(', '.join(classes))}.</p>",
        headline_section(metrics),
        classification_section(y, predicted, classes),
        roc_pr_section(y, prob, classes, baseline),
        calibration_section(y, prob, baseline),
        confusion_section(y, predicted, classes),
        subgroup_section(metrics.get("subgroups") or {}, classes),
        training_section(training_log),
    ]
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(f".{out_html.name}.tmp")
    tmp.write_text(html_page(f"mmhealth: {task}", body), encoding="utf-8")
    tmp.replace(out_html)


def read_training_log(path: Path) -> list[dict]:
    """Rows of a JSON-lines training log."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
