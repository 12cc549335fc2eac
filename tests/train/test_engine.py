"""The engine around the loop: checkpoints that survive a SIGKILL, class weights (real torch, real processes)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.utils.class_weight import compute_class_weight

from conftest import synthetic_tokens, write_labels
from mmhealth.core.config import from_config
from mmhealth.train import checkpoint, loop
from mmhealth.train.config import FinetuneConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "finetune.py"
TINY = {"init": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "patch_size": 4}}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    info = synthetic_tokens(root, n_subjects=90)
    return root, write_labels(root / "labels.parquet", info)


def command(root, labels, out, checkpoints, finetune):
    shards = {s: {m: [str(p) for p in sorted((root / m / s).glob("shard-*.parquet"))] for m in ("dna", "image")}
              for s in ("train", "val")}
    return [sys.executable, str(SCRIPT), "--task", "t", "--modalities", "dna,image", "--labels", str(labels),
            "--shards-json", json.dumps(shards),
            "--tokenizers-json", json.dumps({m: str(root / m / "tokenizer") for m in ("dna", "image")}),
            "--model-json", json.dumps(TINY), "--finetune-json", json.dumps(finetune), "--threads", "1",
            "--out-dir", str(out), "--checkpoint-dir", str(checkpoints)]


def weights(folder: Path) -> dict:
    return {**{f"head.{k}": v for k, v in load_file(folder / "fusion_head.safetensors").items()},
            **{f"{m}.{k}": v for m in ("dna", "image")
               for k, v in load_file(folder / f"encoder-{m}" / "model.safetensors").items()}}


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_weights(tmp_path, tokens):
    root, labels = tokens
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finetune = {"epochs": 3, "lr": 3e-3, "batch_size": 2, "patience": 3, "max_rows_per_bag": 2,
                "checkpoint_every": 1, "log_every": 1, "dropout": 0.1}
    whole = subprocess.run(command(root, labels, tmp_path / "whole", tmp_path / "ck-whole", finetune),
                           capture_output=True, text=True, timeout=300, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert not (tmp_path / "ck-whole").exists()  # a finished run removes its checkpoint

    out, ck = tmp_path / "killed", tmp_path / "ck"
    killed = subprocess.Popen(command(root, labels, out, ck, finetune), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        log = out / "training.jsonl"
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
        # Step row k+1 is written after checkpoint k: two step rows of epoch 2 mean a mid-epoch checkpoint.
        if sum(r["kind"] == "step" and r["epoch"] == 2 for r in rows) >= 2:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "training ended before it could be killed"
    saved = checkpoint.load(ck)["position"]
    assert saved["epoch"] == 2 and 0 < saved["batch"] < 15  # mid-epoch

    rerun = subprocess.run(command(root, labels, out, ck, finetune), capture_output=True, text=True,
                           timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {saved['step']} (epoch 2)" in rerun.stderr
    first, second = weights(tmp_path / "whole"), weights(out)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "resumed weights differ"
    assert epoch_losses(out) == epoch_losses(tmp_path / "whole")


def epoch_losses(folder: Path) -> list[dict]:
    rows = [json.loads(x) for x in (folder / "training.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("train_loss", "val_loss")} for r in rows if r["kind"] == "epoch"]


def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    position = {"epoch": 2, "batch": 3, "step": 7, "losses": [0.5], "stopped": False}
    checkpoint.save(tmp_path, loop.training_state(model, optimizer, scheduler, position,
                                                  {"val_loss": float("inf"), "epoch": 0, "stale": 0}, None,
                                                  [], "fingerprint-a"))
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda step: 1.0)
    assert loop.resume(tmp_path, "fingerprint-b", fresh, fresh_opt, fresh_sched) is None
    assert not torch.equal(fresh.weight, model.weight)
    state = loop.resume(tmp_path, "fingerprint-a", fresh, fresh_opt, fresh_sched)
    assert state["position"] == position and torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert fresh_sched.last_epoch == 1
    checkpoint.remove(tmp_path)
    assert not tmp_path.exists()


def test_fingerprint_follows_settings_and_inputs(tmp_path):
    shard = tmp_path / "shard-0.parquet"
    shard.write_bytes(b"x")
    first = checkpoint.fingerprint({"lr": 1e-3}, [shard])
    assert checkpoint.fingerprint({"lr": 1e-3}, [shard]) == first
    assert checkpoint.fingerprint({"lr": 2e-3}, [shard]) != first
    shard.write_bytes(b"xy")
    assert checkpoint.fingerprint({"lr": 1e-3}, [shard]) != first


def test_balanced_class_weights_match_scikit_learn_and_reach_the_loss():
    labels = np.array([0] * 12 + [1] * 3 + [2] * 1)
    ours = loop.class_weights(labels, 3)
    np.testing.assert_allclose(ours, compute_class_weight("balanced", classes=np.arange(3), y=labels))
    assert loop.class_weights(np.array([0, 0, 2]), 3)[1] == 0  # a class absent from train adds nothing
    # Weighted, a minority-class error costs what n_0 / n_2 majority-class errors cost.
    logits = torch.zeros(2, 3)
    weight = torch.as_tensor(ours, dtype=torch.float32)
    per_class = [torch.nn.functional.cross_entropy(logits[:1], torch.tensor([c]), weight=weight,
                                                   reduction="sum") for c in (0, 2)]
    assert float(per_class[1] / per_class[0]) == pytest.approx(12.0)


def test_balanced_class_weights_train_an_imbalanced_task(tmp_path, tokens):
    import finetune as finetune_entry

    root, labels = tokens
    cfg = from_config(FinetuneConfig, class_weights="balanced", grad_accum_steps=2)
    assert cfg.class_weights == "balanced" and cfg.grad_accum_steps == 2
    out = tmp_path / "model"
    finetune = {"epochs": 2, "lr": 3e-3, "batch_size": 4, "class_weights": "balanced", "grad_accum_steps": 2,
                "max_rows_per_bag": 2}
    finetune_entry.main(command(root, labels, out, tmp_path / "ck", finetune)[2:])
    rows = [json.loads(x) for x in (out / "training.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1 and r["peak_rss_mb"] > 0 for r in rows)
