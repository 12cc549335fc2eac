# Config validation and the facts all stages share (modalities, tasks, the raw-file index, predict batches).
# Output paths: paths.smk; code and envs of each rule: code.smk; input and param functions: inputs.smk.
import json
import os
import re
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
from mmhealth.core.config import config_problems  # noqa: E402  (scripts/mmhealth is the workflow's own code)
from mmhealth.core.task_variants import differences as variant_differences  # noqa: E402
from mmhealth.core.task_variants import task_jobs  # noqa: E402
from mmhealth.ingest import raw_index  # noqa: E402
from mmhealth.split import stratify  # noqa: E402

# One line per problem, naming the key (with a "did you mean"), before Snakemake's own validation, whose
# message would bury it in a dump of the schema.
_problems = config_problems(config)
if _problems:
    raise ValueError("invalid configuration:\n  " + "\n  ".join(_problems))
validate(config, schema="../schemas/config.schema.yaml", set_default=True)

REPO = Path(workflow.basedir)
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
# Every model trained: each task's own and its variants (`<task>~<variant>`: declared, and the automatic
# modality ablations of fusion tasks), each with its effective spec. Rules read a model's spec through
# task_spec(), never config["tasks"], so a variant trains and evaluates with the task's rules.
TASK_JOBS = task_jobs(config["tasks"])
MODELS = list(TASK_JOBS)


def task_spec(name):
    """The effective spec (modalities, labels, model, finetune) of a task or a variant job."""
    return TASK_JOBS[name].spec


def main_task(name):
    """The task a job belongs to: itself for a task, its task for a variant (same labels and split)."""
    return TASK_JOBS[name].task


def task_variant_jobs(task):
    """The variant jobs of a task, in name order (empty for a variant)."""
    return [name for name, job in TASK_JOBS.items() if job.task == task and job.variant is not None]


def task_config_key(name):
    """Where a job's spec comes from in the config: tasks.<t> or tasks.<t>.variants.<v>."""
    job = TASK_JOBS[name]
    return f"tasks.{job.task}" + (f".variants.{job.variant}" if job.variant else "")


def requested_pretrained(spec):
    """`model.pretrained` as a list of modalities (true: all of the spec's)."""
    pretrained = spec["model"].get("pretrained", False)
    return list(spec["modalities"]) if pretrained is True else list(pretrained or [])


def task_pretrained(name):
    """The modalities a task or variant job fine-tunes from this run's pretrain stage (`model.pretrained`);
    an ablation keeps those of the modalities it still has."""
    spec = task_spec(name)
    return [m for m in requested_pretrained(spec) if m in spec["modalities"]]


def effective_model(name):
    """A job's `model` spec as fine-tuning reads it: `encoders.<m>` pointing at results/pretrained/<m> for
    every modality it fine-tunes from the pretrain stage."""
    model = task_spec(name)["model"]
    pretrained = task_pretrained(name)
    if not pretrained:
        return model
    return {**model, "encoders": {**model.get("encoders", {}), **{m: pretrained_dir(m) for m in pretrained}}}


# Modalities the pretrain stage trains: those configured under `pretrain`, and those a task asks for.
PRETRAINED = sorted(set(config["pretrain"]) | {m for t in MODELS for m in task_pretrained(t)})


def _check_config():
    """Cross-key checks JSON Schema cannot express; fail before any job with the key named."""
    fractions = config["split"]
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"config key 'split': fractions must sum to 1, got {fractions}")
    for name, job in TASK_JOBS.items():
        task, spec = task_config_key(name), job.spec
        for modality in spec["modalities"]:
            if TOKEN_SOURCE[modality] not in INGESTED:
                raise ValueError(
                    f"config key '{task}.modalities': '{modality}' needs "
                    f"'inputs.{INGEST_INPUT[TOKEN_SOURCE[modality]]}', which is not set"
                )
        if "path" in spec["model"] and len(spec["modalities"]) > 1:
            raise ValueError(f"config key '{task}.model.path': only for single-modality tasks")
        for modality in requested_pretrained(spec):
            if modality not in spec["modalities"]:
                raise ValueError(f"config key '{task}.model.pretrained': '{modality}' is not one of the "
                                 f"task's modalities {spec['modalities']}")
            if "path" in spec["model"] or modality in spec["model"].get("encoders", {}):
                where = "path" if "path" in spec["model"] else f"encoders.{modality}"
                raise ValueError(f"config keys '{task}.model.pretrained' and '{task}.model.{where}' "
                                 f"both give the {modality} encoder: keep one")
    for modality in config["pretrain"]:
        if TOKEN_SOURCE[modality] not in INGESTED:
            raise ValueError(f"config key 'pretrain.{modality}': needs "
                             f"'inputs.{INGEST_INPUT[TOKEN_SOURCE[modality]]}', which is not set")
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
# Labelled subjects' splits, stratified by their labels and kept once made (one staged file per shard).
SPLIT_ASSIGNMENTS = stratify.stage_splits(
    {t: spec["labels"] for t, spec in config["tasks"].items()}, config["split"], config["privacy"]["salt_file"],
    config["shards"], config["staging"],
)
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
    view=r"[0-9a-f]{12}",
    split="train|val|test",
    shard=r"\d+",
    task="|".join(re.escape(name) for name in MODELS) or "no-task",
    batch="|".join(BATCHES) or "no-batch",


def as_json(value):
    """A config value as one JSON argument (quoted with :q in rules).

    Only ever returned from param functions: Snakemake formats plain string params with wildcards,
    which would choke on JSON braces and on code templates like "SEX//{sex}".
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def split_fractions_json(wildcards):
    return as_json(config["split"])


# ---- resources that grow with each retry, so a job killed for memory or time is resubmitted bigger ----
def mem_mb(base):
    def grow(wildcards, attempt):
        return base * attempt

    return grow


def runtime_min(base):
    def grow(wildcards, attempt):
        return base * attempt

    return grow
