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
from mmhealth.report.data_section import data_section
from mmhealth.report.html import figure_html, format_estimate, html_page, html_table
from mmhealth.report.model_card import build_model_card, write_model_card
from mmhealth.report.variants_section import variants_section
from mmhealth.report.verdicts import BASELINE_RULE, verdict_line

log = logging.getLogger("report_task")

METRIC_TITLES = {"auroc": "AUROC", "auprc": "AUPRC", "accuracy": "Accuracy", "macro_f1": "Macro F1",
                 "brier": "Brier score (lower is better)", "ece": "ECE (lower is better)"}
CALIBRATION_TITLES = {"ece": "ECE, 10 equal-width bins", "ece_adaptive": "ECE, 10 equal-mass bins",
                      "brier": "Brier score", "nll": "Log loss (NLL)",
                      "slope": "Calibration slope (ideal 1)", "intercept": "Calibration-in-the-large (ideal 0)"}
OPERATING_TITLES = {"youden": "Youden's J", "sensitivity_0.9": "Sensitivity ≥ 0.9"}


def headline_section(metrics: dict) -> str:
    model, baseline = metrics.get("model", {}), metrics.get("baseline") or {}
    baseline_title = f"Baseline: {baseline.get('name', 'none')}"
    rows = [[METRIC_TITLES[m], format_estimate(model.get(m)), format_estimate(baseline.get(m))] for m in METRICS]
    counts = (f"Test set: {metrics.get('n_test', 'n/a')} label units from "
              f"{metrics.get('n_subjects_test', 'n/a')} subjects. Brackets: 95% bootstrap confidence interval.")
    return ("<h2 id=\"headline\">Headline metrics</h2>\n"
            f"<p>{escape(counts)}</p>\n<p>Baseline: {escape(baseline.get('description', 'none'))}.</p>\n"
            + html_table(["Metric", "Model", baseline_title], rows))


def comparison_section(metrics: dict) -> str:
    """The model against the baseline on the same test units: the verdict line and its rule."""
    head = "<h2 id=\"comparison\">Compared with the baseline</h2>\n"
    comparison = (metrics.get("comparisons") or {}).get("baseline")
    if not comparison:
        return head + "<p class=\"note\">No paired comparison was computed.</p>"
    units = (f"Paired on {comparison.get('n_units', 'n/a')} test units from {comparison.get('n_subjects', 'n/a')} "
             "subjects that both models predicted.")
    return (head + f"<p><strong>{escape(verdict_line(comparison))}</strong></p>\n"
            f"<p class=\"note\">{escape(units)} {escape(BASELINE_RULE)}</p>")


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


def calibration_section(y: np.ndarray, prob: np.ndarray, baseline: tuple[np.ndarray, np.ndarray] | None,
                        calibrated: np.ndarray | None = None, calibration: dict | None = None) -> str:
    """Reliability diagrams before and after the validation-fitted temperature, and the measures with CIs."""
    binary = prob.shape[1] == 2
    panels = 2 if calibrated is not None else 1
    fig = Figure(figsize=(5 * panels, 4.5))
    axes = np.atleast_1d(fig.subplots(1, panels))
    # The baseline's own rows may differ from the model's: draw it with its own labels.
    ax = axes[0]
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for run, run_y, run_prob, style in [("model", y, prob, "-")] + (
            [("baseline", baseline[0], baseline[1], "--")] if baseline is not None else []):
        _draw_curve(ax, run_y, run_prob, run, style)
    ax.set(xlim=(0, 1), ylim=(0, 1), title="Before calibration")
    ax.legend(fontsize=7, loc="best")
    if calibrated is not None:
        ax = axes[1]
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        _draw_curve(ax, y, prob, "model, before", ":")
        _draw_curve(ax, y, calibrated, "model, after", "-")
        temperature = (calibration or {}).get("temperature")
        ax.set(xlim=(0, 1), ylim=(0, 1),
               title="After temperature scaling" + (f" (T = {temperature:.2f})" if temperature else ""))
        ax.legend(fontsize=7, loc="best")
    for ax in axes:
        ax.set(xlabel="Predicted probability of the positive class" if binary else "Confidence (max probability)",
               ylabel="Observed frequency" if binary else "Accuracy")
    fig.suptitle("Reliability (10 equal-width bins; marker size = units)", fontsize=9)
    head = "<h2 id=\"calibration\">Calibration</h2>\n"
    if not calibration:
        note = "<p class=\"note\">No validation units: no temperature was fitted.</p>"
        return head + note + figure_html(fig, "Reliability diagram")
    val_nll = calibration.get("val_nll") or {}
    text = (f"Temperature scaling: the logits are divided by T = {calibration['temperature']:.3f}, fitted by "
            f"minimising the log loss on {calibration.get('n_val', 'n/a')} validation units (validation log loss "
            f"{val_nll.get('before', float('nan')):.4f} before, {val_nll.get('after', float('nan')):.4f} after) and "
            "applied unchanged to test. It changes no predicted class"
            + (" and, with two classes, no ranking (AUROC)." if binary else ".")
            + " The column probabilities_calibrated of predictions.parquet holds the scaled probabilities."
            + (f" Note: {calibration['note']}." if calibration.get("note") else ""))
    rows = [[title, format_estimate((calibration.get("before") or {}).get(k)),
             format_estimate((calibration.get("after") or {}).get(k))] for k, title in CALIBRATION_TITLES.items()]
    note = ("Test set, 95% bootstrap CIs over subjects. ECE uses the top-class probability. Slope: logistic "
            "regression of the outcome on the log-odds (below 1: over-confident). Calibration-in-the-large: "
            "the log-odds shift with slope fixed at 1 (above 0: risks under-estimated). n/a: undefined, e.g. "
            "several classes, or a perfectly separated test set.")
    return (head + f"<p>{escape(text)}</p>\n" + figure_html(fig, "Reliability diagrams before and after calibration")
            + html_table(["Measure", "Before", "After"], rows) + f"<p class=\"note\">{escape(note)}</p>")


def _draw_curve(ax, y: np.ndarray, prob: np.ndarray, label: str, style: str) -> None:
    curve = calibration_curve(y, prob)
    sizes = 10 + 90 * np.asarray(curve["count"]) / max(curve["count"])
    ax.plot(curve["predicted"], curve["observed"], style, label=label)
    ax.scatter(curve["predicted"], curve["observed"], s=sizes)


def operating_section(operating: dict, classes: list[str]) -> str:
    """Thresholds chosen on validation and what each gives on test."""
    head = "<h2 id=\"operating-points\">Operating points</h2>\n"
    if not operating:
        return head + ("<p class=\"note\">Operating points need exactly two classes and validation units; "
                       "none here.</p>")
    rows = []
    for rule, point in operating.items():
        if point.get("threshold") is None:
            rows.append([OPERATING_TITLES.get(rule, rule), "n/a", "", "", "", "", "", "", "", ""])
            continue
        confusion = point["confusion"]
        rows.append([OPERATING_TITLES.get(rule, rule), f"{point['threshold']:.3f}",
                     *(format_estimate(point.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")),
                     confusion["tp"], confusion["fp"], confusion["tn"], confusion["fn"]])
    text = (f"A unit is called {classes[1]} when P({classes[1]}) is at least the threshold. Each threshold is "
            "chosen on the validation split (Youden's J: highest sensitivity + specificity - 1; Sensitivity "
            "≥ 0.9: the highest threshold that still finds at least 9 of 10 validation positives) and applied "
            "unchanged to the test split. Test values with 95% bootstrap CIs over subjects; thresholds are on "
            "the uncalibrated probabilities.")
    return (head + f"<p>{escape(text)}</p>\n"
            + html_table(["Rule", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV", "TP", "FP", "TN", "FN"],
                         rows))


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


def subgroup_section(subgroups: dict, classes: list[str], overall: dict | None = None) -> str:
    """Tables of the per-group metrics evaluation computed (metrics.json `subgroups`)."""
    head = "<h2 id=\"subgroups\">Subgroups</h2>\n"
    if not subgroups:
        return head + "<p class=\"note\">No subgroup attributes were given.</p>"
    prevalence = f"Prevalence of {classes[1]}" if len(classes) == 2 else "Class fractions"
    rule = (f"AUROC and accuracy with 95% bootstrap CIs over the group's subjects. A group is flagged when its "
            f"AUROC CI lies wholly below the overall test AUROC ({format_estimate(overall)}). Groups with fewer "
            f"than 10 subjects, or fewer than 5 units of a class, are too few to estimate. Age: at the subject's "
            f"latest recorded event, from the shifted dates (no real date is used).")
    parts = [head, f"<p class=\"note\">{escape(rule)}</p>"]
    for attribute, groups in subgroups.items():
        rows = []
        for g in groups:
            fractions = g["class_fractions"]
            shown = (f"{fractions[1]:.3f}" if len(classes) == 2
                     else ", ".join(f"{c} {p:.2f}" for c, p in zip(classes, fractions, strict=True)))
            if g.get("note"):
                auroc, accuracy, flag = g["note"], "", ""
            else:
                auroc, accuracy = _estimate_or_number(g.get("auroc")), _estimate_or_number(g.get("accuracy"))
                flag = "below overall" if g.get("below_overall") else ""
            rows.append([g["group"], str(g["n"]), str(g["subjects"]), shown, auroc, accuracy, flag])
        parts.append(f"<h3>{escape(str(attribute))}</h3>\n"
                     + html_table(["Group", "n", "Subjects", prevalence, "AUROC", "Accuracy", "Flag"], rows))
    return "\n".join(parts)


def _estimate_or_number(entry) -> str:
    if isinstance(entry, dict):
        return format_estimate(entry)
    return "n/a" if entry is None else f"{entry:.3f}"


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
                      baseline_predictions: pd.DataFrame | None = None, accounting: dict | None = None) -> None:
    """Write the task's HTML report: headline table, comparison with the baseline and with the task's variants
    (the fusion ablation), classification report, ROC,
    PR, calibration before and after, operating points, confusion matrix, subgroups and training curves.
    Only aggregates reach the page, never a subject id."""
    if predictions.empty:
        raise ValueError(f"task {task}: no test predictions to report on")
    y, prob, _ = prediction_arrays(predictions, classes)
    predicted = prob.argmax(axis=1)
    baseline = prediction_arrays(baseline_predictions, classes)[:2] if baseline_predictions is not None else None
    calibrated = None
    if "probabilities_calibrated" in predictions and metrics.get("calibration"):
        calibrated = prediction_arrays(predictions.drop(columns="probabilities").rename(
            columns={"probabilities_calibrated": "probabilities"}), classes)[1]
    body = [
        f"<h1>Task {escape(task)}</h1>",
        f"<p>Classes: {escape(', '.join(classes))}.</p>",
        headline_section(metrics),
        comparison_section(metrics),
        variants_section(metrics),
        classification_section(y, predicted, classes),
        roc_pr_section(y, prob, classes, baseline),
        calibration_section(y, prob, baseline, calibrated, metrics.get("calibration")),
        operating_section(metrics.get("operating_points") or {}, classes),
        confusion_section(y, predicted, classes),
        subgroup_section(metrics.get("subgroups") or {}, classes, (metrics.get("model") or {}).get("auroc")),
        training_section(training_log),
        data_section(accounting, [task]),
    ]
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(f".{out_html.name}.tmp")
    tmp.write_text(html_page(f"mmhealth: {task}", body), encoding="utf-8")
    tmp.replace(out_html)


def read_training_log(path: Path) -> list[dict]:
    """The epoch rows of a JSON-lines training log (rows of kind "step" are progress within an epoch)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("kind", "epoch") == "epoch"]


def write_task_and_card(task: str, metrics: dict, predictions: pd.DataFrame, baseline_predictions: pd.DataFrame,
                        training_log_path: Path, out_html: Path, card: tuple | None = None,
                        accounting: dict | None = None) -> None:
    """The task page, and the model card when `card` = (labels, manifests, model_dir, out_json, out_md) names
    its outputs."""
    training_log = read_training_log(training_log_path)
    write_task_report(task, metrics, predictions, metrics["classes"], out_html, training_log, baseline_predictions,
                      accounting)
    labels, manifests, model_dir, out_json, out_md = card or (None,) * 5
    if out_json and out_md:
        write_model_card(build_model_card(task, metrics, labels, manifests, model_dir, training_log), out_json, out_md)
