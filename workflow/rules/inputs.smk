# Input functions and the params derived from them: a job is handed exactly the files its rule declares.
from mmhealth.core.tokenizer_binding import task_token_views, tokenizer_view  # noqa: E402

# Which tokenised view of each modality each task reads: the pipeline's own (None), or the view of the
# tokenizer its pretrained encoder needs (scripts/mmhealth/core/tokenizer_binding.py); a task fine-tuning
# from this run's pretraining reads the view that pretraining read.
PRETRAIN_INIT = {m: (config["pretrain"].get(m) or {}).get("init_from") for m in PRETRAINED}
# The view each pretraining reads: that of its `init_from` checkpoint's own tokenizer, else the pipeline's.
PRETRAIN_VIEWS = {m: init and tokenizer_view(config, m, init, f"pretrain.{m}.init_from")
                  for m, init in PRETRAIN_INIT.items()}
TOKEN_VIEWS = task_token_views(
    config, {t: model_dir(t) for t in MODELS}, RESULTS,
    produced={pretrained_dir(m): {m: init} for m, init in PRETRAIN_INIT.items()},
    specs={t: {**task_spec(t), "model": effective_model(t)} for t in MODELS},
)


def dicom_shard_files(wildcards):
    return RAW_INDEX.dicom.get(int(wildcards.shard), [])


def fasta_shard_files(wildcards):
    return RAW_INDEX.fasta.get(int(wildcards.shard), [])


def ehr_shard_files(wildcards):
    return RAW_INDEX.ehr.get(int(wildcards.shard), [])


def shard_number(wildcards):
    return wildcards.shard


def privacy_json(wildcards):
    return as_json(config["privacy"])


def source_map(modality):
    """Where an ingest job writes its input-name -> path map: the staging folder beside the raw data (never
    results), one file per job so parallel shard jobs never write the same file."""

    def path(wildcards):
        if "batch" in wildcards.keys():
            return str(Path(config["staging"]) / "predict" / wildcards.batch / "source_names" / f"{modality}.tsv")
        return str(Path(config["staging"]) / "source_names" / modality / f"shard-{wildcards.shard}.tsv")

    return path


def ehr_shard_tables_json(wildcards):
    return as_json(raw_index.staged_tables(config["inputs"]["ehr"], ehr_shard_files(wildcards)))


def shard_manifests(wildcards):
    return [shard_manifest(wildcards.modality, k) for k in SHARDS]


def shard_quarantines(wildcards):
    return [shard_quarantine(wildcards.modality, k) for k in SHARDS]


def max_quarantined_fraction(wildcards):
    return config["ingest"]["max_quarantined_fraction"][wildcards.modality]


def ingested_parts(wildcards):
    return [p for m in INGESTED for p in ingest_parts(m)]


def audit_inputs(wildcards):
    return {
        "subjects": subjects_table(),
        "image": ingest_parts("image") if "image" in INGESTED else [],
        "dna": ingest_parts("dna") if "dna" in INGESTED else [],
        "code": entry_code("leakage_audit"),
    }


def meds_inputs(wildcards):
    return {"parts": ingest_parts("ehr"), "subjects": subjects_table(), "code": entry_code("meds_layout")}


def tokenizer_inputs(wildcards):
    """Train rows of the ingest parts; ancient, like the split files: a fitted vocabulary is kept as data grows."""
    return {
        "parts": [ancient(p) for p in ingest_parts(TOKEN_SOURCE[wildcards.modality])],
        "splits": [ancient(p) for p in SPLIT_ASSIGNMENTS],
        "code": modality_code("tokenize_modality")(wildcards),
    }


def split_assignment(wildcards):
    """This shard's staged assignment of labelled subjects to splits (split/stratify.py)."""
    return SPLIT_ASSIGNMENTS[int(wildcards.shard)]


def tokenize_shard_input(wildcards):
    return ingest_part(TOKEN_SOURCE[wildcards.modality], wildcards.shard)


def tokenize_params(wildcards):
    return as_json(config["tokenize"][wildcards.modality])


def view_tokenize_params(wildcards):
    """A view's params: the modality's own, with the encoder folder's tokenizer copied instead of fitted."""
    return as_json({**config["tokenize"][wildcards.modality], "tokenizer_path": TOKEN_VIEWS.sources[wildcards.view]})


def task_view(task, modality):
    """The view of `modality` that `task` reads (None: the pipeline's own)."""
    return TOKEN_VIEWS.by_task[task][modality]


def token_views():
    """(modality, view) of every tokenised view some task reads, the pipeline's own first."""
    pairs = {(m, task_view(t, m)) for t in MODELS for m in task_modalities(t)}
    pairs |= {(m, pretrain_view(m)) for m in PRETRAINED}
    return sorted(pairs, key=lambda pair: (pair[0], pair[1] or ""))


def task_modalities(task):
    return task_spec(task)["modalities"]


def task_shard_map(task, splits):
    """split -> modality -> the task's token shard files, in shard order."""
    return {s: {m: [token_shard(m, s, k, task_view(task, m)) for k in SHARDS] for m in task_modalities(task)}
            for s in splits}


def task_shards(task, splits):
    return [path for by_modality in task_shard_map(task, splits).values() for paths in by_modality.values()
            for path in paths]


def shards_json(splits):
    """Param function: the same shard files as the job's input, as JSON split -> modality -> files."""

    def shards(wildcards):
        return as_json(task_shard_map(wildcards.task, splits))

    return shards


def task_tokenizers(task):
    return {m: tokenizer_dir(m, task_view(task, m)) for m in task_modalities(task)}


def tokenizers_json(wildcards):
    return as_json(task_tokenizers(wildcards.task))


def pretrained_model_inputs(task):
    """Model folders of other tasks whose encoders this task starts from (`model.encoders`)."""
    paths = [Path(p).resolve() for p in task_spec(task)["model"].get("encoders", {}).values()]
    return [model_dir(t) for t in TASKS
            if t != task and any(p.is_relative_to(Path(model_dir(t)).resolve()) for p in paths)]


def pretrain_stage_inputs(task):
    """This run's pretrained folders a task fine-tunes from (`model.pretrained`): re-running pretraining
    re-runs exactly these tasks."""
    return [pretrained_dir(m) for m in task_pretrained(task)]


def train_inputs(wildcards):
    return {
        "pretrained": pretrained_model_inputs(wildcards.task) + pretrain_stage_inputs(wildcards.task),
        "shards": task_shards(wildcards.task, ["train", "val"]),
        "tokenizers": list(task_tokenizers(wildcards.task).values()),
        "labels": task_labels(main_task(wildcards.task)),
        "code": task_code("finetune")(wildcards),
    }


# train: the baseline's fit; val: temperature and thresholds; test: every reported number.
EVALUATE_SPLITS = ["train", "val", "test"]


def evaluate_inputs(wildcards):
    return {
        "model": model_dir(wildcards.task),
        "shards": task_shards(wildcards.task, EVALUATE_SPLITS),
        "tokenizers": list(task_tokenizers(wildcards.task).values()),
        "labels": task_labels(main_task(wildcards.task)),
        "code": task_code("evaluate_task")(wildcards),
        "ehr": ingest_parts("ehr") if "ehr" in INGESTED else [],
        # a task's evaluation compares its model with each variant on the same test subjects
        "variants": [eval_file(v, "predictions.parquet") for v in task_variant_jobs(wildcards.task)],
    }


def variants_json(wildcards):
    """The variants' test predictions (the job's `variants` input) with what each one changed, as JSON."""
    task = task_spec(wildcards.task)
    return as_json({TASK_JOBS[v].variant: {"predictions": eval_file(v, "predictions.parquet"),
                                           "kind": TASK_JOBS[v].kind, "modalities": task_modalities(v),
                                           "changes": variant_differences(task, task_spec(v))}
                    for v in task_variant_jobs(wildcards.task)})


def task_report_inputs(wildcards):
    return {
        "metrics": eval_file(wildcards.task, "metrics.json"),
        "predictions": eval_file(wildcards.task, "predictions.parquet"),
        "baseline": eval_file(wildcards.task, "baseline_predictions.parquet"),
        "model": model_dir(wildcards.task),
        "labels": task_labels(wildcards.task),
        "manifests": sorted({ingest_manifest(TOKEN_SOURCE[m]) for m in task_modalities(wildcards.task)}),
        "accounting": accounting_file(),
        "code": entry_code("task_report"),
    }


def training_log_of(wildcards, input):
    """The training log inside the declared model folder."""
    return str(Path(input.model) / "training.jsonl")


def labels_file(wildcards):
    return config["tasks"][wildcards.task]["labels"]


def task_modalities_csv(wildcards):
    return ",".join(task_modalities(wildcards.task))


def model_params(wildcards):
    return as_json(effective_model(wildcards.task))


def pretrain_view(modality):
    return PRETRAIN_VIEWS.get(modality)


def pretrain_shard_map(modality):
    """split -> the modality's train and val token shards (pretraining never reads test rows)."""
    return {s: [token_shard(modality, s, k, pretrain_view(modality)) for k in SHARDS] for s in ("train", "val")}


def pretrain_inputs(wildcards):
    return {
        "shards": [p for paths in pretrain_shard_map(wildcards.modality).values() for p in paths],
        "tokenizer": tokenizer_dir(wildcards.modality, pretrain_view(wildcards.modality)),
        "code": modality_code("pretrain_modality")(wildcards),
    }


def pretrain_shards_json(wildcards):
    return as_json(pretrain_shard_map(wildcards.modality))


def pretrain_params(wildcards):
    """config `pretrain.<m>` ({} when only a task asks for it: the schema's defaults apply)."""
    return as_json(config["pretrain"].get(wildcards.modality, {}))


def finetune_params(wildcards):
    spec = {k: v for k, v in task_spec(wildcards.task)["finetune"].items() if k != "gpus"}
    return as_json(spec)


def task_gpus(wildcards):
    return task_spec(wildcards.task)["finetune"]["gpus"]


def train_launcher(wildcards):
    """One process per GPU: torchrun when a task asks for several, plain python otherwise."""
    gpus = task_gpus(wildcards)
    return "python" if gpus == 1 else f"python -m torch.distributed.run --standalone --nproc_per_node {gpus}"


def meds_root_of(wildcards, output):
    """results/meds from results/meds/metadata/dataset.json."""
    return str(Path(output[0]).parents[1])


def predict_raw_files(kind):
    """Input function: a predict batch's raw files of one kind (`dicom`, `fasta`; `ehr`: staged CSVs)."""

    def files(wildcards):
        return getattr(PREDICT_INDEX[wildcards.batch], kind).get(0, [])

    return files


def predict_raw_root(key):
    def root(wildcards):
        return config["predict"][wildcards.batch]["inputs"][key]

    return root


def predict_ehr_tables_json(wildcards):
    tables = config["predict"][wildcards.batch]["inputs"]["ehr"]
    return as_json(raw_index.staged_tables(tables, predict_raw_files("ehr")(wildcards)))


def predict_regex(wildcards):
    return config["predict"][wildcards.batch]["inputs"]["fasta_subject_regex"]


def predict_tokenize_input(wildcards):
    return predict_ingest_file(wildcards.batch, TOKEN_SOURCE[wildcards.modality], "part-0.parquet")


def predict_task_inputs(wildcards):
    return {
        "model": model_dir(wildcards.task),
        "tokens": [predict_tokens(wildcards.batch, m, task_view(wildcards.task, m))
                   for m in task_modalities(wildcards.task)],
        "subjects": subjects_table(),
        "code": task_code("predict_task")(wildcards),
    }


def predict_report_inputs(wildcards):
    tasks = batch_tasks(wildcards.batch)
    return {
        "predictions": [predictions_file(wildcards.batch, t) for t in tasks],
        "manifests": [predict_ingest_file(wildcards.batch, m, "manifest.json") for m in batch_sources(wildcards.batch)],
        "eval_reports": [eval_file(t, "report.html") for t in tasks],
        "code": entry_code("predict_report"),
    }


def predict_shards_json(wildcards):
    """The batch's token files of the task's modalities (the job's `tokens` input), as split `all` -> modality -> files."""
    task = wildcards.task
    return as_json({"all": {m: [predict_tokens(wildcards.batch, m, task_view(task, m))] for m in task_modalities(task)}})


def raw_root(key):
    """Param function: the configured raw folder (a function, as the folder may hold no file yet)."""

    def root(wildcards):
        return config["inputs"][key]

    return root


def accounting_inputs(wildcards):
    return {
        "manifests": [result("ingest", m, "manifest.json") for m in INGESTED],
        "quarantines": [result("ingest", m, "quarantine.parquet") for m in INGESTED],
        "subjects": subjects_table(),
        "labels": [task_labels(t) for t in TASKS],
        "code": entry_code("data_accounting"),
    }


def accounting_maps_json(wildcards):
    """The same files as the job's inputs, as the JSON maps its entry point reads."""
    return {
        "manifests": as_json({m: result("ingest", m, "manifest.json") for m in INGESTED}),
        "quarantines": as_json({m: result("ingest", m, "quarantine.parquet") for m in INGESTED}),
        "labels": as_json({t: task_labels(t) for t in TASKS}),
    }
