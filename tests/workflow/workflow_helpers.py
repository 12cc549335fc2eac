"""Running the real Snakemake on tiny generated data: shared by the workflow and cluster tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
TASKS = ["lesion_ct", "variant_dna", "finding_note", "diabetes_ehr", "composite_risk"]
TINY_PRETRAINED = {"variant_dna": "dna", "finding_note": "text"}  # task -> the modality it fine-tunes from pretraining
def tiny_config(raw: Path) -> dict:
    """The demo config shrunk to seconds: same tasks and inputs, tiny models, one epoch."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    text = json.dumps(config).replace("demo/raw", str(raw))
    config = json.loads(text)
    config.pop("predict", None)  # the demo's batch of new patients is not generated here
    config.update(shards=2, split={"train": 0.5, "val": 0.25, "test": 0.25},
                  evaluate={"bootstrap": 50, "seed": 0})
    config["ingest"]["dicom"]["image_size"] = 16
    config["tokenize"]["image"]["size"] = 16
    config["tokenize"]["text"]["vocab_size"] = 300
    tiny = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "patch_size": 4}
    for name, task in config["tasks"].items():
        task["model"] = {"init": dict(tiny), **({"pretrained": True} if name in TINY_PRETRAINED else {})}
        task["finetune"].update(epochs=1, patience=1, batch_size=8, max_rows_per_bag=2)
        task.pop("variants", None)  # the demo's `fresh` comparisons would double the training jobs
    # the fusion task's six automatic ablations would double the run: tests that want them turn them on
    config["tasks"]["composite_risk"]["ablations"] = False
    # Two modalities pretrained (a few steps each) keep the run short and still show the DAG's dependency.
    config["pretrain"] = {TINY_PRETRAINED[t]: {"init": dict(tiny), "max_steps": 3, "batch_size": 8, "log_every": 1}
                          for t in TINY_PRETRAINED}
    return config


def copy_workflow(target: Path) -> Path:
    """The workflow's own files in a scratch folder, so a test may edit its code; returns the Snakefile."""
    import shutil

    for name in ("workflow", "scripts", "envs", "profiles", "config"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "Snakefile", target / "Snakefile")
    return target / "Snakefile"


def snakemake(workdir: Path, *args: str, check: bool = True, snakefile: Path | None = None
              ) -> subprocess.CompletedProcess:
    """Run Snakemake in `workdir` (the repository's Snakefile unless another is given)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile or REPO / "Snakefile"), *args]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env, timeout=900)
    if check and done.returncode:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    return done
