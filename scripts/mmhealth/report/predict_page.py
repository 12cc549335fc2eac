"""One page per batch of new data: what was ingested and refused, and each task's predictions at a glance.

For each task: units predicted, how many subjects are new and how many the models already saw in training
(their predictions are in-sample), predicted classes, and the distribution of the predicted probability of
each class for new and for seen subjects. Links to each task's evaluation report say how far to trust it.
No subject id appears on the page.
"""

from __future__ import annotations

import json
import logging
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from mmhealth.core.parquet_io import read_metadata
from mmhealth.report.html import figure_html, html_page, html_table

log = logging.getLogger("report_predict")

NEW = "new"


def subject_status(predictions: pd.DataFrame) -> pd.Series:
    """'new' for a subject the training run never had, else the split it was in."""
    if "training_split" not in predictions:
        return pd.Series(NEW, index=predictions.index)
    return predictions["training_split"].fillna(NEW)


def probability_figure(task: str, predictions: pd.DataFrame, classes: list[str]) -> Figure:
    """Histogram of P(last class) (binary) or of the top probability (several classes), new against seen;
    calibrated probabilities where the predictions hold them."""
    column = "probabilities_calibrated" if "probabilities_calibrated" in predictions else "probabilities"
    probabilities = np.stack(predictions[column].to_numpy()) if len(predictions) else np.zeros((0, 2))
    binary = len(classes) == 2
    value = probabilities[:, -1] if binary else probabilities.max(axis=1, initial=0.0)
    status = subject_status(predictions).to_numpy()
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    for label, mask, colour in (("new subjects", status == NEW, "tab:blue"),
                                ("seen in training", status != NEW, "tab:grey")):
        if mask.any():
            ax.hist(value[mask], bins=bins, alpha=0.7, label=f"{label} ({int(mask.sum())})", color=colour)
    xlabel = f"P({classes[-1]})" if binary else "highest class probability"
    xlabel += ", calibrated" if column == "probabilities_calibrated" else ", raw"
    ax.set(xlabel=xlabel, ylabel="units", title=task, xlim=(0, 1))
    if len(predictions):
        ax.legend(fontsize=8)
    return fig


def task_row(task: str, predictions: pd.DataFrame, temperature: float | None = None) -> list:
    status = subject_status(predictions)
    subjects = predictions.assign(status=status).drop_duplicates("subject_id")["status"]
    counts = predictions["predicted"].value_counts().sort_index()
    return [task, len(predictions), len(subjects), int((subjects == NEW).sum()), int((subjects != NEW).sum()),
            ", ".join(f"{c}: {n}" for c, n in counts.items()) or "none",
            f"{temperature:.3f}" if temperature is not None else "none saved"]


def manifest_rows(manifests: list[Path]) -> list[list]:
    rows = []
    for path in sorted(manifests):
        manifest = json.loads(Path(path).read_text())
        rows.append([manifest.get("modality", Path(path).parent.name), manifest["records_in"],
                     manifest["records_out"], manifest["records_quarantined"]])
    return rows


def write_predict_report(batch: str, predictions: dict[str, Path], manifests: list[Path],
                         eval_reports: dict[str, Path], out_html: Path) -> None:
    """The batch page; `predictions` and `eval_reports` map task -> file, links relative to out_html."""
    out_html = Path(out_html)
    rows, figures, links = [], [], []
    for task in sorted(predictions):
        frame = pq.read_table(predictions[task]).to_pandas()
        params = read_metadata(predictions[task])["params"]
        classes = params["classes"]  # the probability columns' order
        rows.append(task_row(task, frame, params.get("temperature")))
        figures.append(figure_html(probability_figure(task, frame, classes), f"{task}: predicted probabilities"))
        if task in eval_reports:
            link = Path(os.path.relpath(eval_reports[task], out_html.parent)).as_posix()
            links.append(f'<li><a href="{escape(quote(link))}">{escape(task)}</a>: test-set evaluation</li>')
    body = [
        f"<h1>mmhealth: predictions for {escape(batch)}</h1>",
        "<p>New exports run through the trained tasks: ingested with the same pseudonym key, tokenised with "
        "the training run's tokenizers. A subject the models already saw in training gets an in-sample "
        "prediction; the column <code>training_split</code> of each <code>predictions.parquet</code> marks "
        "them.</p>",
        "<h2 id=\"ingest\">Ingested</h2>",
        html_table(["Modality", "Records in", "Records out", "Quarantined"], manifest_rows(manifests)),
        "<h2 id=\"tasks\">Tasks</h2>",
        html_table(["Task", "Units predicted", "Subjects", "New subjects", "Seen in training", "Predicted",
                    "Temperature T"], rows),
        "<h2 id=\"probabilities\">Predicted probabilities</h2>",
        "<p>Each <code>predictions.parquet</code> holds two sets of probabilities. <code>probabilities</code>: "
        "the model's raw output (softmax of its logits). <code>probabilities_calibrated</code>: the same after "
        "temperature scaling, softmax(logits / T), with the T in the table above, fitted on the validation "
        "split when the model was trained and saved with it (<code>calibration.json</code> in the model "
        "folder); the task's evaluation page reports the test-set calibration of both. T never changes the "
        "predicted class. Read the calibrated ones as risks; the histograms show them.</p>",
        *figures,
    ]
    if links:
        body += ["<h2 id=\"trust\">How far to trust them</h2>", "<ul>", *links, "</ul>"]
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(f".{out_html.name}.tmp")
    tmp.write_text(html_page(f"mmhealth: predictions for {batch}", body), encoding="utf-8")
    tmp.replace(out_html)
