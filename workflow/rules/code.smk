# The code each rule runs and the pinned conda env it runs in.
#
# A rule's `code` input is its entry script (scripts/<entry>.py) and every mmhealth module the script
# imports, transitively, read from the imports themselves (scripts/mmhealth/core/code_inputs.py): editing a
# module re-runs exactly the jobs that run it. Jobs of a modality or a task list only the modality modules
# they use, so DNA code never re-runs an image-only task.
from mmhealth.core.code_inputs import code_files  # noqa: E402

SCRIPTS = REPO / "scripts"
ENVS = REPO / "envs"
# Entry script -> env (tests/workflow/test_envs.py checks each env provides every import of the entry's code).
ENTRY_ENV = {
    "ingest_dicom": "ingest",
    "ingest_fasta": "ingest",
    "ingest_ehr": "ingest",
    "ingest_manifest": "ingest",
    "subject_split": "ingest",
    "task_labels": "ingest",
    "leakage_audit": "ingest",
    "meds_layout": "ingest",
    "tokenize_modality": "tokenize",
    "pretrain_modality": "train",
    "finetune": "train",
    "evaluate_task": "train",
    "predict_task": "train",
    "task_report": "report",
    "summary_report": "report",
    "data_accounting": "report",
    "predict_report": "report",
}


def entry_code(entry):
    """Entry script first (rules run `{input.code[0]}`), then the modules it imports."""
    return code_files(SCRIPTS / f"{entry}.py")


def modality_code(entry):
    """Input function: the entry's code for the job's `modality` wildcard."""

    def files(wildcards):
        return code_files(SCRIPTS / f"{entry}.py", [wildcards.modality])

    return files


def task_code(entry):
    """Input function: the entry's code for the modalities of the job's `task`."""

    def files(wildcards):
        return code_files(SCRIPTS / f"{entry}.py", task_spec(wildcards.task)["modalities"])

    return files


def entry_env(entry):
    return str(ENVS / f"{ENTRY_ENV[entry]}.yaml")
