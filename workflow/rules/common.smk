# Config validation, every output path, and every input function of the workflow.
import json
import os
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
import raw_index  # noqa: E402  (scripts/ is the workflow's own code)


validate(config, schema="../schemas/config.schema.yaml", set_default=True)

REPO = Path(workflow.basedir)
SCRIPTS = REPO / "scripts"
ENVS = REPO / "envs"
RESULTS = Path(config["results"])
SHARDS = list(range(config["shards"]))
SPLITS = ["train", "val", "test"]

# Without conda, a job's `python` is the interpreter running Snakemake (the project's venv), even when the
# venv is not activated; with --sdm conda each rule's env puts its own python first.
envvars:
    "PATH",


if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

# Raw input that feeds each ingested modality; text and ehr tokens both come from the ehr events.
INGEST_INPUT = {"image": "dicom", "dna": "fasta", "ehr": "ehr"}
TOKEN_SOURCE = {"image": "image", "dna": "dna", "text": "ehr", "ehr": "ehr"}
INGESTED = [m for m, key in INGEST_INPUT.items() if config["inputs"].get(key)]
TASKS = sorted(config["tasks"])


def _check_config():
    """Cross-key checks JSON Schema cannot express; fail before any job with the key named."""
    fractions = config["split"]
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"config key 'split': fractions must sum to 1, got {fractions}")
    for task, spec in config["tasks"].items():
        for modality in spec["modalities"]:
            if TOKEN_SOURCE[modality] not in INGESTED:
                raise ValueError(
                    f"config key 'tasks.{task}.modalities': '{modality}' needs "
                    f"'inputs.{INGEST_INPUT[TOKEN_SOURCE[modality]]}', which is not set"
                )
        if "path" in spec["model"] and len(spec["modalities"]) > 1:
            raise ValueError(f"config key 'tasks.{task}.model.path': only for single-modality tasks")
    salt = Path(config["privacy"]["salt_file"]).resolve()
    if salt.is_relative_to(RESULTS.resolve()):
        raise ValueError("config key 'privacy.salt_file': the pseudonym key must not live under results")
    if Path(config["staging"]).resolve().is_relative_to(RESULTS.resolve()):
        raise ValueError("config key 'staging': it holds raw identifiers and must not live under results")


_check_config()
# Which raw files feed which shard; reads only new or changed files (cache in the staging folder).
RAW_INDEX = raw_index.build_index(
    config["inputs"], config["privacy"]["salt_file"], config["shards"], config["staging"]
)
TOKENIZED = sorted({m for spec in config["tasks"].values() for m in spec["modalities"]})
# New data to predict on (config `predict`): batches of raw exports run through trained tasks.
BATCHES = sorted(config["predict"])


def batch_ingested(batch):
    """The ingested modalities a predict batch has inputs for."""
    inputs = config["predict"][batch]["inputs"]
    return [m for m, key in INGEST_INPUT.items() if inputs.get(key)]


def batch_tasks(batch):
    """Tasks run on a batch: those it names, or every task whose modalities its inputs provide."""
    named = config["predict"][batch].get("tasks")
    if named is not None:
        return named
    have = set(batch_ingested(batch))
    return [t for t in TASKS if all(TOKEN_SOURCE[m] in have for m in config["tasks"][t]["modalities"])]


def batch_sources(batch):
    """The ingested modalities a batch's tasks read."""
    return sorted({TOKEN_SOURCE[m] for t in batch_tasks(batch) for m in config["tasks"][t]["modalities"]})


def _check_predict():
    for batch in BATCHES:
        have = batch_ingested(batch)
        for task in config["predict"][batch].get("tasks") or []:
            if task not in config["tasks"]:
                raise ValueError(f"config key 'predict.{batch}.tasks': there is no task '{task}'")
            for modality in config["tasks"][task]["modalities"]:
                if TOKEN_SOURCE[modality] not in have:
                    raise ValueError(
                        f"config key 'predict.{batch}.tasks': '{task}' needs '{modality}' data from "
                        f"'predict.{batch}.inputs.{INGEST_INPUT[TOKEN_SOURCE[modality]]}', which is not set"
                    )
        if not batch_tasks(batch):
            raise ValueError(f"config key 'predict.{batch}': no task has all its modalities in these inputs")


_check_predict()
# Each batch's raw files indexed like the inputs, as one shard (new batches are small).
PREDICT_INDEX = {
    batch: raw_index.build_index(
        config["predict"][batch]["inputs"], config["privacy"]["salt_file"], 1,
        str(Path(config["staging"]) / "predict" / batch),
    )
    for batch in BATCHES
}

wildcard_constraints:
    modality="image|dna|text|ehr",
    split="train|val|test",
    shard=r"\d+",
    task="|".join(TASKS) or "no-task",
    batch="|".join(BATCHES) or "no-batch",


# ---- output paths: the only place result paths are built ----
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


def shard_manifest(modality, shard):
    return result("ingest", modality, "shards", f"manifest-{shard}.json")


def tokenizer_dir(modality):
    return result("tokens", modality, "tokenizer")


def token_shard(modality, split, shard):
    return result("tokens", modality, split, f"shard-{shard}.parquet")


def subjects_table():
    return result("splits", "subjects.parquet")


def audit_report():
    return result("splits", "audit.json")


def meds_dataset():
    return result("meds", "metadata", "dataset.json")


def task_labels(task):
    return result("splits", "labels", f"{task}.parquet")


def model_dir(task):
    return result("models", task)


def eval_file(task, name):
    return result("eval", task, name)


def summary_report():
    return result("report.html")


def predict_file(batch, *parts):
    return result("predict", batch, *parts)


def predict_ingest_file(batch, modality, name):
    return predict_file(batch, "ingest", modality, name)


def predict_tokens(batch, modality):
    return predict_file(batch, "tokens", modality, "all", "shard-0.parquet")


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


STAGES = ["ingest", "split", "tokenize", "train", "evaluate", "report"]


def stage_outputs(stage):
    """What one stage adds to its target."""
    if stage == "ingest":
        return [result("ingest", m, name) for m in INGESTED for name in ("manifest.json", "quarantine.parquet")]
    if stage == "split":
        return [subjects_table(), audit_report(), *[task_labels(t) for t in TASKS],
                *([meds_dataset()] if "ehr" in INGESTED else [])]
    if stage == "tokenize":
        return [token_shard(m, s, k) for m in TOKENIZED for s in SPLITS for k in SHARDS]
    if stage == "train":
        return [model_dir(t) for t in TASKS]
    if stage == "evaluate":
        return [eval_file(t, "metrics.json") for t in TASKS]
    return [summary_report()]


def all_outputs(stage):
    """Everything a stage target asks for: that stage and every stage before it."""
    return [path for s in STAGES[: STAGES.index(stage) + 1] for path in stage_outputs(s)]


# ---- code each stage runs: an input, so editing it re-runs the stage (mtime trigger) ----
STAGE_CODE = {
    "ingest_dicom": ["ingest_dicom.py", "dicom_series.py", "dicom_pixels.py", "ingest_common.py", "pseudonym.py",
                     "parquet_io.py"],
    "ingest_fasta": ["ingest_fasta.py", "fasta_windows.py", "ingest_common.py", "pseudonym.py", "parquet_io.py"],
    "ingest_ehr": ["ingest_ehr.py", "ehr_scrub.py", "meds_layout.py", "ingest_common.py", "pseudonym.py",
                   "parquet_io.py"],
    "ingest_manifest": ["ingest_common.py", "pseudonym.py", "parquet_io.py"],
    "split": ["subject_split.py", "pseudonym.py", "parquet_io.py"],
    "labels": ["task_labels.py", "pseudonym.py", "parquet_io.py"],
    "audit": ["leakage_audit.py", "parquet_io.py"],
    "meds": ["meds_layout.py", "parquet_io.py"],
    "fit_tokenizer": ["fit_tokenizer.py", "tokenize_{modality}.py", "kmers.py", "special_tokens.py",
                      "subject_split.py", "pseudonym.py", "parquet_io.py"],
    "tokenize": ["tokenize_shard.py", "fit_tokenizer.py", "tokenize_{modality}.py", "kmers.py", "special_tokens.py",
                 "subject_split.py", "pseudonym.py", "parquet_io.py"],
    "train": ["train.py", "models.py", "bags.py", "pseudonym.py", "distributed.py", "kmers.py", "special_tokens.py", "parquet_io.py"],
    "evaluate": ["evaluate.py", "predict.py", "train.py", "models.py", "bags.py", "pseudonym.py", "distributed.py",
                 "kmers.py",
                 "special_tokens.py", "metrics.py", "baseline.py", "report_task.py", "parquet_io.py"],
    "report": ["report_all.py", "report_task.py", "metrics.py", "parquet_io.py"],
    "predict_report": ["report_predict.py", "report_task.py", "metrics.py", "parquet_io.py"],
    "predict": ["predict.py", "train.py", "models.py", "bags.py", "pseudonym.py", "distributed.py", "kmers.py",
                "special_tokens.py", "parquet_io.py"],
}


def stage_code(stage):
    """The stage's entry script first, then the modules it imports."""
    return [str(SCRIPTS / name) for name in STAGE_CODE[stage]]


# The pinned conda env of each stage (tests/test_envs.py checks it provides every import of the stage's code).
STAGE_ENV = {
    "ingest_dicom": "ingest",
    "ingest_fasta": "ingest",
    "ingest_ehr": "ingest",
    "ingest_manifest": "ingest",
    "split": "ingest",
    "labels": "ingest",
    "audit": "ingest",
    "meds": "ingest",
    "fit_tokenizer": "tokenize",
    "tokenize": "tokenize",
    "train": "train",
    "evaluate": "train",
    "report": "report",
    "predict": "train",
    "predict_report": "report",
}


def stage_env(stage):
    return str(ENVS / f"{STAGE_ENV[stage]}.yaml")


def as_json(value):
    """A config value as one JSON argument (quoted with :q in rules).

    Only ever returned from param functions: Snakemake formats plain string params with wildcards,
    which would choke on JSON braces and on code templates like "SEX//{sex}".
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def split_fractions_json(wildcards):
    return as_json(config["split"])


# ---- input functions ----
def dicom_shard_files(wildcards):
    return RAW_INDEX.dicom.get(int(wildcards.shard), [])


def fasta_shard_files(wildcards):
    return RAW_INDEX.fasta.get(int(wildcards.shard), [])


def ehr_shard_files(wildcards):
    return RAW_INDEX.ehr.get(int(wildcards.shard), [])


def shard_number(wildcards):
    return wildcards.shard


def ehr_shard_tables_json(wildcards):
    return as_json(raw_index.staged_tables(config["inputs"]["ehr"], ehr_shard_files(wildcards)))


def shard_manifests(wildcards):
    return [shard_manifest(wildcards.modality, k) for k in SHARDS]


def shard_quarantines(wildcards):
    return [shard_quarantine(wildcards.modality, k) for k in SHARDS]


def ingested_parts(wildcards):
    return [p for m in INGESTED for p in ingest_parts(m)]


def audit_inputs(wildcards):
    return {
        "subjects": subjects_table(),
        "image": ingest_parts("image") if "image" in INGESTED else [],
        "dna": ingest_parts("dna") if "dna" in INGESTED else [],
        "code": stage_code("audit"),
    }


def meds_inputs(wildcards):
    return {"parts": ingest_parts("ehr"), "subjects": subjects_table(), "code": stage_code("meds")}


def tokenizer_inputs(wildcards):
    return [ancient(p) for p in ingest_parts(TOKEN_SOURCE[wildcards.modality])]


def tokenize_shard_input(wildcards):
    return ingest_part(TOKEN_SOURCE[wildcards.modality], wildcards.shard)


def tokenize_params(wildcards):
    return as_json(config["tokenize"][wildcards.modality])


def task_modalities(task):
    return config["tasks"][task]["modalities"]


def task_shards(task, splits):
    return [token_shard(m, s, k) for m in task_modalities(task) for s in splits for k in SHARDS]


def pretrained_model_inputs(task):
    """Model folders of other tasks whose encoders this task starts from (`model.encoders`)."""
    paths = [Path(p).resolve() for p in config["tasks"][task]["model"].get("encoders", {}).values()]
    return [model_dir(t) for t in TASKS
            if t != task and any(p.is_relative_to(Path(model_dir(t)).resolve()) for p in paths)]


def train_inputs(wildcards):
    return {
        "pretrained": pretrained_model_inputs(wildcards.task),
        "shards": task_shards(wildcards.task, ["train", "val"]),
        "tokenizers": [tokenizer_dir(m) for m in task_modalities(wildcards.task)],
        "labels": task_labels(wildcards.task),
        "code": stage_code("train"),
    }


def evaluate_inputs(wildcards):
    return {
        "model": model_dir(wildcards.task),
        "shards": task_shards(wildcards.task, ["train", "test"]),
        "labels": task_labels(wildcards.task),
        "code": stage_code("evaluate"),
        "ehr": ingest_parts("ehr") if "ehr" in INGESTED else [],
    }


def task_spec_json(wildcards, key):
    return as_json(config["tasks"][wildcards.task].get(key, {}))


def fit_tokenizer_code(wildcards):
    return [s.format(modality=wildcards.modality) for s in stage_code("fit_tokenizer")]


def tokenize_code(wildcards):
    return [s.format(modality=wildcards.modality) for s in stage_code("tokenize")]


def labels_file(wildcards):
    return config["tasks"][wildcards.task]["labels"]


def task_modalities_csv(wildcards):
    return ",".join(task_modalities(wildcards.task))


def model_params(wildcards):
    return task_spec_json(wildcards, "model")


def finetune_params(wildcards):
    spec = {k: v for k, v in config["tasks"][wildcards.task]["finetune"].items() if k != "gpus"}
    return as_json(spec)


def task_gpus(wildcards):
    return config["tasks"][wildcards.task]["finetune"]["gpus"]


def train_launcher(wildcards):
    """One process per GPU: torchrun when a task asks for several, plain python otherwise."""
    gpus = task_gpus(wildcards)
    return "python" if gpus == 1 else f"python -m torch.distributed.run --standalone --nproc_per_node {gpus}"


# ---- params derived from a job's own files (no hard-coded result prefixes in rules) ----
def folder_of_metrics(wildcards, output):
    return os.path.dirname(output.metrics)


def meds_root_of(wildcards, output):
    """results/meds from results/meds/metadata/dataset.json."""
    return str(Path(output[0]).parents[1])


def tokens_root_of(wildcards, input):
    """results/tokens from any token shard results/tokens/<modality>/<split>/shard-<k>.parquet."""
    return str(Path(input.shards[0]).parents[2])


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
        "tokens": [predict_tokens(wildcards.batch, m) for m in task_modalities(wildcards.task)],
        "subjects": subjects_table(),
        "code": stage_code("predict"),
    }


def predict_report_inputs(wildcards):
    tasks = batch_tasks(wildcards.batch)
    return {
        "predictions": [predictions_file(wildcards.batch, t) for t in tasks],
        "manifests": [predict_ingest_file(wildcards.batch, m, "manifest.json") for m in batch_sources(wildcards.batch)],
        "eval_reports": [eval_file(t, "report.html") for t in tasks],
        "code": stage_code("predict_report"),
    }


def predict_tokens_root_of(wildcards, input):
    """results/predict/<batch>/tokens from results/predict/<batch>/tokens/<modality>/all/shard-0.parquet."""
    return str(Path(input.tokens[0]).parents[2])


def raw_root(key):
    """Param function: the configured raw folder (a function, as the folder may hold no file yet)."""

    def root(wildcards):
        return config["inputs"][key]

    return root


# ---- resources that grow with each retry, so a job killed for memory or time is resubmitted bigger ----
def mem_mb(base):
    def grow(wildcards, attempt):
        return base * attempt

    return grow


def runtime_min(base):
    def grow(wildcards, attempt):
        return base * attempt

    return grow
