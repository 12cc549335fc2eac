"""Task and summary reports: every section present, valid HTML, inline PNGs, escaped text, no subject ids."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmhealth.core.parquet_io import write_table
from mmhealth.evaluate.calibration import calibration_report
from mmhealth.evaluate.compare import compare_auroc
from mmhealth.evaluate.metrics import bootstrap_metrics, json_safe, prediction_arrays
from mmhealth.evaluate.operating import operating_points
from mmhealth.evaluate.subgroups import sex_subgroups, subgroup_metrics
from mmhealth.report.summary import write_summary_report
from mmhealth.report.task_page import write_task_report
from summary_report import main as report_all_main
from task_report import main as report_task_main

VOID = {"meta", "img", "br", "hr", "link", "input"}
TASK_SECTIONS = ["headline", "comparison", "classification-report", "roc", "pr", "calibration", "operating-points",
                 "confusion", "subgroups", "training", "data"]


class PageParser(HTMLParser):
    """Collects headings, images, links and tables, and checks that elements nest properly."""

    def __init__(self):
        super().__init__()
        self.stack, self.section_ids, self.images, self.links, self.tags = [], [], [], [], []
        self.text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "h2":
            self.section_ids.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs)
        if tag == "a":
            self.links.append(attrs["href"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    html = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(html)
    parser.close()
    assert parser.stack == [], f"unclosed elements {parser.stack}"
    assert html.startswith("<!DOCTYPE html>")
    for image in parser.images:
        assert image["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(image["src"].split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
        assert image["alt"]
    return html, parser


def make_predictions(rng, classes, n_subjects=40, rows_per_subject=2, skill=1.5):
    subjects = rng.integers(10**15, 9 * 10**15, n_subjects)  # pseudonym-sized ids
    subject = np.repeat(subjects, rows_per_subject)
    y = rng.integers(0, len(classes), len(subject))
    logits = rng.normal(0, 1, (len(y), len(classes)))
    logits[np.arange(len(y)), y] += skill
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.DataFrame({"subject_id": subject.astype(np.int64), "record_id": [f"r{i:022d}" for i in range(len(y))],
                         "label": [classes[k] for k in y], "predicted": [classes[k] for k in prob.argmax(axis=1)],
                         "probabilities": [row.tolist() for row in prob]})


def metrics_for(task, predictions, baseline_predictions, classes):
    def block(frame):
        y = frame["label"].map({c: k for k, c in enumerate(classes)}).to_numpy()
        return bootstrap_metrics(y, np.array(frame["probabilities"].tolist()), frame["subject_id"].to_numpy(),
                                 n_boot=100)
    return json_safe({"task": task, "n_test": len(predictions),
                      "n_subjects_test": int(predictions["subject_id"].nunique()), "model": block(predictions),
                      "baseline": {"name": "logistic_regression_token_histogram", **block(baseline_predictions)},
                      "comparisons": {"baseline": compare_auroc(predictions, baseline_predictions, classes, 100, 0)}})


def with_validation(metrics, predictions, val_predictions, classes):
    """Calibration and operating points fitted on `val_predictions`, as evaluation writes them."""
    val_y, val_prob, _ = prediction_arrays(val_predictions, classes)
    y, prob, subjects = prediction_arrays(predictions, classes)
    calibration, calibrated = calibration_report(val_y, val_prob, y, prob, subjects, 100, 0)
    metrics = {**metrics, "calibration": json_safe(calibration),
               "operating_points": json_safe(operating_points(val_y, val_prob, y, prob, subjects, 100, 0))}
    return metrics, predictions.assign(probabilities_calibrated=[row.tolist() for row in calibrated])


def test_task_report_has_every_section_and_no_subject_ids(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["benign", "malignant & <b>"]
    predictions = make_predictions(rng, classes)
    weak = make_predictions(rng, classes, skill=0.3)  # the baseline: same units and labels, weaker scores
    baseline_predictions = predictions.assign(probabilities=weak["probabilities"], predicted=weak["predicted"])
    metrics = metrics_for("<script>alert(1)</script>", predictions, baseline_predictions, classes)
    metrics, predictions = with_validation(metrics, predictions, make_predictions(rng, classes, skill=1.0), classes)
    subgroups = pd.DataFrame({"subject_id": predictions["subject_id"].unique()})
    subgroups["sex"] = np.where(np.arange(len(subgroups)) % 2, "F", "M")
    subgroups.loc[0, "sex"] = None
    training_log = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "val_auroc": 0.6 + e / 20}
                    for e in range(4)]
    metrics["subgroups"] = json_safe(subgroup_metrics(predictions, classes, subgroups, 0.9, 100, 0))
    out = tmp_path / "eval" / "t" / "report.html"
    write_task_report("<script>alert(1)</script>", metrics, predictions, classes, out, training_log,
                      baseline_predictions)

    html, page = parse(out)
    assert page.section_ids == TASK_SECTIONS
    assert "script" not in page.tags and "b" not in page.tags  # user text is escaped, never markup
    assert "strong" in page.tags
    assert "&lt;script&gt;" in html and "malignant &amp; &lt;b&gt;" in html
    assert len(page.images) == 5  # ROC, PR, calibration, confusion matrix, training curves
    text = " ".join(page.text)
    for subject in predictions["subject_id"].unique():
        assert str(subject) not in html
    for record in predictions["record_id"]:
        assert record not in html
    auroc = metrics["model"]["auroc"]
    assert f"{auroc['value']:.3f} ({auroc['ci'][0]:.3f}–{auroc['ci'][1]:.3f})" in text
    assert "logistic_regression_token_histogram" in text
    assert "Macro F1" in text and "macro avg" in text and "weighted avg" in text
    # Subgroup rows: F and M and the subject without a value, with their row counts.
    female = subgroups.loc[subgroups["sex"] == "F", "subject_id"]
    n_female = int(predictions["subject_id"].isin(female).sum())
    assert f"F {n_female} {len(female)}" in " ".join(" ".join(page.text).split())
    assert "unknown" in text and "too few to estimate" in text  # the one subject without a value
    # The verdict line, from the comparison's CI, and its rule; calibration before and after; thresholds.
    comparison = metrics["comparisons"]["baseline"]
    lo, hi = comparison["difference"]["ci"]
    word = "yes" if lo > 0 else "no" if hi < 0 else "inconclusive"
    assert f"beats the baseline: {word} (ΔAUROC {comparison['difference']['value']:+.3f}" in text
    assert "wholly above 0" in text
    assert f"T = {metrics['calibration']['temperature']:.3f}" in text and "before and after calibration" in html
    youden = metrics["operating_points"]["youden"]
    confusion = youden["confusion"]
    assert (f"Youden's J {youden['threshold']:.3f}" in " ".join(text.split())
            and f"{confusion['tp']} {confusion['fp']} {confusion['tn']} {confusion['fn']}" in " ".join(text.split()))


def test_multiclass_and_single_class_reports_are_written(tmp_path):
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c"]
    predictions = make_predictions(rng, classes)
    write_task_report("multi", metrics_for("multi", predictions, predictions, classes), predictions, classes,
                      tmp_path / "multi.html")
    _, page = parse(tmp_path / "multi.html")
    assert page.section_ids == TASK_SECTIONS
    assert len(page.images) == 4  # no training log: no training figure
    assert "No training log was given." in " ".join(page.text)

    single = predictions.assign(label="a")
    metrics = metrics_for("single", single, single, classes)
    assert metrics["model"]["auroc"] == {"value": None, "ci": [None, None], "n_boot": 0}
    write_task_report("single", metrics, single, classes, tmp_path / "single.html")
    _, page = parse(tmp_path / "single.html")
    text = " ".join(page.text)
    assert "AUROC n/a n/a" in " ".join(text.split()) and "single class" in text


def test_task_report_cli_reads_pipeline_files(tmp_path):
    rng = np.random.default_rng(2)
    classes = ["neg", "pos"]
    predictions = make_predictions(rng, classes)
    predictions.to_parquet(tmp_path / "predictions.parquet")
    predictions.to_parquet(tmp_path / "baseline_predictions.parquet")
    (tmp_path / "training.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 0.7, "val_loss": 0.6})
                                                     + "\n" for e in range(3)))
    subjects = predictions["subject_id"].unique()
    events = pa.table({"subject_id": pa.array(np.repeat(subjects, 2), pa.int64()),
                       "code": pa.array([c for k in range(len(subjects))
                                         for c in (f"SEX//{'F' if k % 3 else 'M'}", "LAB//GLUCOSE")])})
    write_table(events, tmp_path / "ehr" / "part-0.parquet", "ingest")
    sex = sex_subgroups([tmp_path / "ehr" / "part-0.parquet"])
    assert sorted(sex.columns) == ["sex", "subject_id"] and len(sex) == len(subjects)
    metrics = {**metrics_for("t", predictions, predictions, classes), "classes": classes,
               "subgroups": json_safe(subgroup_metrics(predictions, classes, sex))}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    labels = pd.DataFrame({"subject_id": np.r_[subjects, [1, 2, 3]], "record_id": None,
                           "label": [*predictions.drop_duplicates("subject_id")["label"], "neg", "pos", "pos"],
                           "split": ["test"] * len(subjects) + ["train", "train", "val"]})
    labels.to_parquet(tmp_path / "labels.parquet")
    manifest = tmp_path / "ingest" / "ehr" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"modality": "ehr", "records_in": 5, "records_out": 4, "records_quarantined": 1,
                                    "inputs": {"raw/patients.csv": "ab" * 32, "raw/labs.csv": "cd" * 32}}))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mmhealth_model.json").write_text(json.dumps({"modalities": ["ehr"], "record_level": False}))
    report_task_main(["--task", "t", "--metrics", str(tmp_path / "metrics.json"),
                      "--predictions", str(tmp_path / "predictions.parquet"),
                      "--baseline-predictions", str(tmp_path / "baseline_predictions.parquet"),
                      "--out", str(tmp_path / "report.html"), "--training-log", str(tmp_path / "training.jsonl"),
                      "--labels", str(tmp_path / "labels.parquet"), "--manifests", str(manifest),
                      "--model-dir", str(tmp_path / "model"), "--out-card-json", str(tmp_path / "model_card.json"),
                      "--out-card-md", str(tmp_path / "model_card.md")])
    html, page = parse(tmp_path / "report.html")
    assert page.section_ids == TASK_SECTIONS and len(page.images) == 5
    assert "<h3>sex</h3>" in html

    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["standard"].startswith("TRIPOD+AI") and card["intended_use"] and card["out_of_scope"]
    assert card["data"]["splits"]["test"]["subjects"] == len(subjects)
    assert card["data"]["splits"]["train"] == {"units": 2, "subjects": 2, "class_fractions": {"neg": 0.5, "pos": 0.5}}
    ehr = card["data"]["inputs"]["ehr"]
    assert ehr["records_quarantined"] == 1 and ehr["input_files"] == 2 and len(ehr["inputs_sha256"]) == 64
    assert card["performance"]["verdict"].startswith("beats the baseline: ")
    assert "torch" in card["software"] and card["predictors"]["modalities"] == ["ehr"]
    markdown = (tmp_path / "model_card.md").read_text()
    for heading in ("Intended use", "Out of scope", "Data source and participants", "Predictors", "Performance",
                    "Calibration", "Fairness: subgroups", "Limitations", "Software"):
        assert f"## {heading}" in markdown
    for text in (markdown, json.dumps(card)):  # neither subject ids nor raw file names
        assert not any(str(s) in text for s in subjects) and "patients.csv" not in text


def test_task_report_refuses_mismatched_probabilities(tmp_path):
    predictions = make_predictions(np.random.default_rng(3), ["a", "b"])
    with pytest.raises(ValueError, match="3 entries"):
        write_task_report("t", {}, predictions, ["a", "b", "c"], tmp_path / "r.html")


def test_summary_report_links_every_task(tmp_path):
    rng = np.random.default_rng(4)
    results = tmp_path / "results"
    for task, classes in (("tumour", ["no", "yes"]), ("stage", ["I", "II", "III"])):
        predictions = make_predictions(rng, classes)
        path = results / "eval" / task / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(metrics_for(task, predictions, predictions, classes), allow_nan=False))
    undefined = results / "eval" / "empty_class" / "metrics.json"
    undefined.parent.mkdir(parents=True)
    undefined.write_text(json.dumps({"task": "empty_class", "n_test": 3, "n_subjects_test": 2,
                                     "model": {"auroc": {"value": None, "ci": [None, None]}},
                                     "baseline": {"name": "b", "auroc": {"value": 0.5, "ci": [None, None]}}}))
    metrics_files = sorted((results / "eval").glob("*/metrics.json"))
    report_all_main(["--metrics", *map(str, metrics_files), "--out", str(results / "report.html")])
    _, page = parse(results / "report.html")
    reports = ["eval/empty_class/report.html", "eval/stage/report.html", "eval/tumour/report.html"]
    assert page.links == reports + reports  # the verdict lines, then the list of task reports
    assert page.section_ids[0] == "verdicts"
    assert len(page.images) == 1
    text = " ".join(" ".join(page.text).split())
    tumour = json.loads((results / "eval" / "tumour" / "metrics.json").read_text())
    auprc = tumour["baseline"]["auprc"]
    assert f"{auprc['value']:.3f} ({auprc['ci'][0]:.3f}–{auprc['ci'][1]:.3f})" in text
    assert "empty_class 3 2 n/a 0.500" in text
    assert "empty_class beats the baseline: not computed" in text
    comparison = tumour["comparisons"]["baseline"]
    assert f"tumour beats the baseline: inconclusive (ΔAUROC {comparison['difference']['value']:+.3f}" in text
    assert "wholly above 0" in text

    # A summary written elsewhere still links to the task reports, relative to its own folder.
    write_summary_report(metrics_files[:1], tmp_path / "elsewhere" / "summary.html")
    _, page = parse(tmp_path / "elsewhere" / "summary.html")
    assert page.links == ["../results/eval/empty_class/report.html"] * 2


def test_predict_report_counts_new_and_seen_subjects_without_ids(tmp_path):
    from mmhealth.predict.inference import write_predictions
    from predict_report import main as report_predict_main

    results = tmp_path / "results"
    subjects = [4711000000000011, 4711000000000011, 4711000000000012, 4711000000000013]  # pseudonym-sized
    frame = pd.DataFrame({"subject_id": subjects, "record_id": ["a", "b", "c", "d"], "label": [None] * 4,
                          "predicted": ["no", "yes", "yes", "no"],
                          "probabilities": [np.array(p, np.float32) for p in ([.8, .2], [.3, .7], [.1, .9], [.6, .4])],
                          "training_split": ["train", "train", None, None]})
    predictions = results / "predict" / "ward" / "lesion" / "predictions.parquet"
    frame["probabilities_calibrated"] = [np.array(p, np.float32) for p in ([.7, .3], [.4, .6], [.2, .8], [.55, .45])]
    write_predictions(frame, predictions, {"classes": ["no", "yes"], "temperature": 1.5})
    manifest = results / "predict" / "ward" / "ingest" / "image" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"modality": "image", "records_in": 9, "records_out": 8, "records_quarantined": 1}))
    out = results / "predict" / "ward" / "report.html"
    report_predict_main(["--batch", "ward", "--predictions", str(predictions), "--manifests", str(manifest),
                         "--eval-reports", str(results / "eval" / "lesion" / "report.html"), "--out", str(out)])
    html, page = parse(out)
    assert page.section_ids == ["ingest", "tasks", "probabilities", "trust"] and len(page.images) == 1
    assert page.links == ["../../eval/lesion/report.html"]
    text = " ".join(" ".join(page.text).split())
    assert "image 9 8 1" in text
    assert "lesion 4 3 2 1 no: 2, yes: 2 1.500" in text  # 4 units, 3 subjects: 2 new, 1 seen in training; T
    assert "probabilities_calibrated" in text and "raw output" in text  # the page says which column is which
    assert not any(str(s) in html for s in subjects)
