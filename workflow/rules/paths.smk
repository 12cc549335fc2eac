# Every output path of the workflow: the only place result paths are built.


def result(*parts):
    return str(RESULTS.joinpath(*map(str, parts)))


def log_path(*parts):
    return result("logs", *parts[:-1], f"{parts[-1]}.log")


def benchmark_path(*parts):
    return result("benchmarks", *parts[:-1], f"{parts[-1]}.tsv")


def ingest_parts(modality):
    return [result("ingest", modality, f"part-{k}.parquet") for k in SHARDS]


def ingest_part(modality, shard):
    return result("ingest", modality, f"part-{shard}.parquet")


def shard_quarantine(modality, shard):
    return result("ingest", modality, "shards", f"quarantine-{shard}.parquet")


def ingest_manifest(modality):
    return result("ingest", modality, "manifest.json")


def shard_manifest(modality, shard):
    return result("ingest", modality, "shards", f"manifest-{shard}.json")


def token_view_folder(modality, view=None):
    """A modality's tokenised view: the pipeline's own (`text`) or another tokenizer's (`text@<view>`)."""
    return modality if view is None else f"{modality}@{view}"


def tokenizer_dir(modality, view=None):
    return result("tokens", token_view_folder(modality, view), "tokenizer")


def token_shard(modality, split, shard, view=None):
    return result("tokens", token_view_folder(modality, view), split, f"shard-{shard}.parquet")


def subjects_table():
    return result("splits", "subjects.parquet")


def audit_report():
    return result("splits", "audit.json")


def failed_audit_report():
    """Not an output: a failed audit's copy of its report, which Snakemake leaves (it deletes audit.json)."""
    return result("splits", "audit.failed.json")


def meds_dataset():
    return result("meds", "metadata", "dataset.json")


def task_labels(task):
    return result("splits", "labels", f"{task}.parquet")


def pretrained_dir(modality):
    return result("pretrained", modality)


def pretrain_checkpoint_dir(modality):
    """A pretraining job's resumable state: a param, not an output, so Snakemake keeps it when the job fails."""
    return result("checkpoints", "pretrained", modality)


def model_dir(task):
    """A task's model folder; a variant job `<task>~<variant>` gets its own sibling folder, never one inside."""
    return result("models", task)


def checkpoint_dir(task):
    """A training job's resumable state: a param, not an output, so Snakemake keeps it when the job fails."""
    return result("checkpoints", task)


def eval_file(task, name):
    return result("eval", task, name)


def summary_report():
    return result("report.html")


def accounting_file():
    return result("accounting.json")


def predict_file(batch, *parts):
    return result("predict", batch, *parts)


def predict_ingest_file(batch, modality, name):
    return predict_file(batch, "ingest", modality, name)


def predict_tokens(batch, modality, view=None):
    return predict_file(batch, "tokens", token_view_folder(modality, view), "all", "shard-0.parquet")


def predictions_file(batch, task):
    return predict_file(batch, task, "predictions.parquet")


def predict_report(batch):
    return predict_file(batch, "report.html")


def predict_outputs():
    """What the `predict` target asks for: each batch's page, its tasks' predictions and ingest manifests."""
    return [
        *(predict_ingest_file(b, m, "manifest.json") for b in BATCHES for m in batch_sources(b)),
        *(predictions_file(b, t) for b in BATCHES for t in batch_tasks(b)),
        *(predict_report(b) for b in BATCHES),
    ]


def task_metrics():
    """Each task's own metrics.json (its variants' are compared inside it): the summary page's rows."""
    return [eval_file(t, "metrics.json") for t in TASKS]


STAGES = ["ingest", "split", "tokenize", "pretrain", "train", "evaluate", "report"]


def stage_outputs(stage):
    """What one stage adds to its target."""
    if stage == "ingest":
        return [result("ingest", m, name) for m in INGESTED for name in ("manifest.json", "quarantine.parquet")]
    if stage == "split":
        return [subjects_table(), audit_report(), *[task_labels(t) for t in TASKS],
                *([meds_dataset()] if "ehr" in INGESTED else [])]
    if stage == "tokenize":
        return [token_shard(m, s, k, view) for m, view in token_views() for s in SPLITS for k in SHARDS]
    if stage == "pretrain":
        return [pretrained_dir(m) for m in PRETRAINED]
    if stage == "train":
        return [model_dir(m) for m in MODELS]
    if stage == "evaluate":
        return [eval_file(m, "metrics.json") for m in MODELS]
    return [accounting_file(), *(eval_file(t, "report.html") for t in TASKS), summary_report()]


def all_outputs(stage):
    """Everything a stage target asks for: that stage and every stage before it."""
    return [path for s in STAGES[: STAGES.index(stage) + 1] for path in stage_outputs(s)]
