"""One summary page over every task: a verdict line per task (does the model beat its baseline?), sizes,
model and baseline AUROC/AUPRC with CIs, calibration before and after, links to task reports."""

from __future__ import annotations

import json
import logging
import math
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from mmhealth.report.data_section import data_section
from mmhealth.report.html import figure_html, format_estimate, html_page, html_table
from mmhealth.report.variants_section import fusion_lines
from mmhealth.report.verdicts import BASELINE_RULE, FUSION_RULE, verdict_line

log = logging.getLogger("report_all")


def _value_and_error(entry: dict | None) -> tuple[float, tuple[float, float]]:
    """Bar height and (below, above) error-bar lengths; NaN height where undefined, zero error without a CI."""
    value = (entry or {}).get("value")
    if not isinstance(value, int | float) or not math.isfinite(value):
        return math.nan, (0.0, 0.0)
    ci = (entry or {}).get("ci") or [None, None]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in ci):
        return float(value), (0.0, 0.0)
    return float(value), (max(value - ci[0], 0.0), max(ci[1] - value, 0.0))


def auroc_chart(results: list[dict]) -> Figure:
    """Grouped bars of AUROC per task, model against baseline, with 95% CI error bars."""
    fig = Figure(figsize=(max(5.0, 1.2 * len(results) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(results))
    for offset, (side, colour) in zip((-0.2, 0.2), (("model", "tab:blue"), ("baseline", "tab:grey")), strict=True):
        heights, errors = zip(*(_value_and_error(r.get(side, {}).get("auroc") if r.get(side) else None)
                                for r in results), strict=True)
        ax.bar(x + offset, np.nan_to_num(heights), width=0.4, color=colour, label=side,
               yerr=np.array(errors).T, capsize=4)
        for xi, h in zip(x + offset, heights, strict=True):
            if math.isnan(h):
                ax.text(xi, 0.02, "n/a", ha="center", fontsize=8)
    ax.axhline(0.5, linestyle=":", color="black", linewidth=1, label="chance")
    rotate = len(results) > 4  # long rows of task names would overlap
    ax.set_xticks(x, [r.get("task", "?") for r in results], rotation=30 if rotate else 0,
                  ha="right" if rotate else "center")
    ax.set(ylabel="AUROC (95% CI)", ylim=(0, 1.05), title="Test AUROC by task")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def calibration_cell(result: dict) -> str:
    """'0.126 → 0.071 (T = 1.85)': test ECE before and after the validation-fitted temperature."""
    calibration = result.get("calibration") or {}
    before, after = (calibration.get("before") or {}).get("ece"), (calibration.get("after") or {}).get("ece")
    if not before or not after or before.get("value") is None or after.get("value") is None:
        return "not fitted"
    return f"{before['value']:.3f} → {after['value']:.3f} (T = {calibration['temperature']:.2f})"


def verdict_items(results: list[tuple[dict, str]]) -> list[str]:
    """One <li> per task: its verdict line against the baseline, and for a fusion task with ablations the
    gain over its best single modality and each modality's contribution; linked to the task page."""
    items = []
    for result, report in results:
        line = verdict_line((result.get("comparisons") or {}).get("baseline"))
        fusion = "".join(f"<br>{escape(extra)}" for extra in fusion_lines(result))
        items.append(f'<li><a href="{escape(quote(report))}">{escape(str(result["task"]))}</a> '
                     f"{escape(line)}{fusion}</li>")
    return items


def write_summary_report(metrics_files: list[Path], out_html: Path, accounting: dict | None = None) -> None:
    """Write the summary page; each task links to report.html beside its metrics.json, relative to out_html."""
    out_html = Path(out_html)
    results = []
    for path in metrics_files:
        result = json.loads(Path(path).read_text())
        result.setdefault("task", Path(path).parent.name)
        report = Path(os.path.relpath(Path(path).parent / "report.html", out_html.parent)).as_posix()
        results.append((result, report))
    results.sort(key=lambda item: str(item[0]["task"]))
    rows, links = [], []
    for result, report in results:
        model, baseline = result.get("model") or {}, result.get("baseline") or {}
        rows.append([result["task"], result.get("n_test", "n/a"), result.get("n_subjects_test", "n/a"),
                     format_estimate(model.get("auroc")), format_estimate(baseline.get("auroc")),
                     format_estimate(model.get("auprc")), format_estimate(baseline.get("auprc")),
                     # spaces, not underscores: a long name then wraps inside its cell
                     str(baseline.get("name", "none")).replace("_", " "), calibration_cell(result)])
        links.append(f'<li><a href="{escape(quote(report))}">{escape(str(result["task"]))}</a></li>')
    header = ["Task", "Test units", "Test subjects", "Model AUROC", "Baseline AUROC", "Model AUPRC",
              "Baseline AUPRC", "Baseline", "ECE before → after calibration"]
    body = [
        "<h1>mmhealth: all tasks</h1>",
        "<p>Test-set estimates with 95% bootstrap confidence intervals over subjects.</p>",
    ]
    if rows:
        fusion = any(fusion_lines(r) for r, _ in results)
        title = "Does each model beat its baseline? Does fusion help?" if fusion else "Does each model beat its baseline?"
        body += [f"<h2 id=\"verdicts\">{title}</h2>", "<ul>", *verdict_items(results),
                 "</ul>", f"<p class=\"note\">{escape(BASELINE_RULE)}</p>"]
        if fusion:
            body.append(f"<p class=\"note\">Fusion tasks. {escape(FUSION_RULE)}</p>")
    body += [
        "<h2 id=\"tasks\">Tasks</h2>",
        html_table(header, rows) if rows else "<p class=\"note\">No task was evaluated.</p>",
    ]
    if rows:
        body += ["<h2 id=\"auroc\">AUROC, model against baseline</h2>",
                 figure_html(auroc_chart([r for r, _ in results]), "AUROC by task, model against baseline"),
                 "<h2 id=\"reports\">Task reports</h2>", "<ul>", *links, "</ul>"]
    body.append(data_section(accounting, [str(r["task"]) for r, _ in results]))
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(f".{out_html.name}.tmp")
    tmp.write_text(html_page("mmhealth: all tasks", body), encoding="utf-8")
    tmp.replace(out_html)
