"""The pretraining loop: the fine-tuning engine (streamed shards, AdamW with warm-up, atomic safetensors
checkpoints, resume) around a self-supervised loss instead of labels.

Each row of the modality's train split is one unit of `train.stream` (a bag of one row), so rows stream,
shuffle and split across loader workers and DDP ranks exactly as fine-tuning's bags do. Masks are drawn
from a generator seeded by (seed, epoch, batch): a resumed run masks every batch as the whole run did.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmhealth.core.modalities import TOKEN_MODALITIES
from mmhealth.pretrain.config import PretrainConfig
from mmhealth.pretrain.masking import mask_patches, mask_tokens
from mmhealth.pretrain.models import patch_count
from mmhealth.train import checkpoint
from mmhealth.train.bags import FlatColumn, Units, read_row_ids
from mmhealth.train.device import autocast
from mmhealth.train.distributed import Processes, wrap
from mmhealth.train.loop import optimizer_for, peak_rss_mb, resume, training_state, warmup_then_linear
from mmhealth.train.stream import BagStream, batches_per_rank, loader

log = logging.getLogger("pretrain")
VAL_ROWS = 2048  # validation rows (evenly spaced) whose masked loss is reported each epoch


def row_units(files: list[Path], modality: str) -> Units:
    """Every token row (or slice) of the files as its own unit: the stream's bags of one row."""
    rows = read_row_ids(files, modality)
    n = len(rows)
    return Units(subject_id=rows.subject_id, record_id=rows.record_id, labels=np.zeros(n, dtype=np.int64),
                 files={modality: [Path(p) for p in files]}, file_rows={modality: rows.file_rows},
                 image_shape=rows.image_shape,
                 bags={modality: FlatColumn(np.arange(n, dtype=np.int64), np.arange(n + 1, dtype=np.int64))})


@dataclass
class Objective:
    """The self-supervised loss of one modality: mask a batch, return (loss, tokens or patches seen)."""

    modality: str
    mask_prob: float
    vocab_size: int = 0
    special_ids: tuple[int, ...] = ()
    mask_id: int = 0
    span: int = 1  # k for overlapping DNA k-mers

    def masked_inputs(self, rows: dict, model: torch.nn.Module, generator: torch.Generator) -> tuple[dict, int]:
        """The model's keyword inputs for a collated batch (CPU tensors) and the tokens (patches) it holds."""
        if self.modality in TOKEN_MODALITIES:
            ids, labels = mask_tokens(rows["input_ids"], list(self.special_ids), self.mask_id, self.vocab_size,
                                      self.mask_prob, generator, self.span)
            return ({"input_ids": ids, "attention_mask": rows["attention_mask"], "labels": labels},
                    int(rows["attention_mask"].sum()))
        pixels = rows["pixel_values"]
        patches = patch_count(model)
        return ({"pixel_values": pixels, "bool_masked_pos": mask_patches(len(pixels), patches, self.mask_prob,
                                                                          generator)}, len(pixels) * patches)


def mask_generator(seed: int, epoch: int, batch: int, kind: int = 0) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, batch, kind]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def model_inputs(inputs: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: Units, objective: Objective, cfg: PretrainConfig,
                    device: torch.device) -> float:
    """Mean masked loss over (up to VAL_ROWS) validation rows, with the same masks at every epoch."""
    model.eval()
    subset = np.unique(np.linspace(0, len(val) - 1, min(len(val), VAL_ROWS)).astype(np.int64))
    losses = []
    for b, batch in enumerate(loader(BagStream(val, cfg.batch_size, 1, train=False, subset=subset), 0, device)):
        inputs, _ = objective.masked_inputs(batch["inputs"][objective.modality], model,
                                            mask_generator(cfg.seed, 0, b, kind=1))
        with autocast(device):
            losses.append(float(model(**model_inputs(inputs, device)).loss))
    model.train()
    return float(np.mean(losses)) if losses else math.nan


def train_stream(train: Units, cfg: PretrainConfig, epoch: int, procs: Processes) -> BagStream:
    return BagStream(train, cfg.batch_size, 1, train=True, seed=cfg.seed, epoch=epoch, rank=procs.rank,
                     world=procs.world, workers=max(1, cfg.loader_workers), shuffle_buffer=cfg.shuffle_buffer,
                     drop_last=procs.world > 1)


def pretrain_fit(model: torch.nn.Module, objective: Objective, train: Units, val: Units, cfg: PretrainConfig,
                 device: torch.device, history_path: Path, procs: Processes | None = None,
                 checkpoints: Path | None = None, fingerprint: str = "") -> dict:
    """Pretrain for `cfg.epochs` (or `cfg.max_steps` optimizer steps); returns the last epoch's row.

    Rank 0 writes a step row every `cfg.log_every` steps (loss, learning rate, tokens or patches per second)
    and an epoch row (mean train loss, validation loss) to `history_path`, and with `checkpoints` saves the
    whole state every `cfg.checkpoint_every` steps and at each epoch end; a later call with the same
    `fingerprint` resumes from it (on CPU bit for bit the uninterrupted run).
    """
    procs = procs or Processes()
    model.to(device)
    trained = wrap(model, procs)
    optimizer = optimizer_for(model, cfg)
    per_epoch = batches_per_rank(train, np.arange(len(train)), procs.world, max(1, cfg.loader_workers),
                                 cfg.batch_size, drop_last=procs.world > 1)
    total = per_epoch * cfg.epochs if not cfg.max_steps else min(per_epoch * cfg.epochs, cfg.max_steps)
    scheduler = warmup_then_linear(optimizer, max(1, total))
    unit = "tokens_per_s" if objective.modality in TOKEN_MODALITIES else "patches_per_s"
    position, history = {"epoch": 1, "batch": 0, "step": 0, "losses": []}, []
    state = resume(checkpoints, fingerprint, model, optimizer, scheduler)
    if state is not None:
        position, history = state["position"], state["history"]

    def save_state() -> None:
        if checkpoints is not None and procs.is_main:
            saved = {**position, "losses": [float(x) for x in position["losses"]]}
            checkpoint.save(checkpoints, training_state(model, optimizer, scheduler, saved, {}, None, history,
                                                        fingerprint))

    with (history_path if procs.is_main else Path(os.devnull)).open("w") as out:
        for row in history:
            out.write(json.dumps(row) + "\n")
        for epoch in range(position["epoch"], cfg.epochs + 1):
            if position["step"] >= total:
                break
            model.train()
            first, losses = position["batch"], list(position["losses"])
            started, seen = time.perf_counter(), 0
            window = {"started": started, "seen": 0}
            batches = iter(loader(train_stream(train, cfg, epoch, procs), cfg.loader_workers, device))
            for _ in range(first):  # a resumed epoch: the batches already trained on are rebuilt and skipped
                next(batches)
            for b in tqdm(range(first, per_epoch), desc=f"pretrain epoch {epoch}", mininterval=5,
                          disable=not procs.is_main):
                batch = next(batches)
                inputs, count = objective.masked_inputs(batch["inputs"][objective.modality], model,
                                                        mask_generator(cfg.seed, epoch, b))
                with autocast(device):
                    loss = trained(**model_inputs(inputs, device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                seen, window["seen"] = seen + count, window["seen"] + count
                position = {"epoch": epoch, "batch": b + 1, "step": position["step"] + 1, "losses": losses}
                if cfg.log_every and position["step"] % cfg.log_every == 0:
                    seconds = max(time.perf_counter() - window["started"], 1e-9)
                    out.write(json.dumps({"kind": "step", "epoch": epoch, "step": position["step"],
                                          "loss": float(losses[-1]), "lr": scheduler.get_last_lr()[0],
                                          unit: round(window["seen"] * procs.world / seconds, 1)}) + "\n")
                    out.flush()
                    window = {"started": time.perf_counter(), "seen": 0}
                if cfg.checkpoint_every and position["step"] % cfg.checkpoint_every == 0:
                    save_state()
                if position["step"] >= total:
                    break
            seconds = time.perf_counter() - started
            row = {"kind": "epoch", "epoch": epoch, "step": position["step"],
                   "train_loss": float(np.mean([float(x) for x in losses])) if losses else math.nan,
                   "val_loss": validation_loss(model, val, objective, cfg, device),
                   "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 2),
                   unit: round(seen * procs.world / max(seconds, 1e-9), 1), "peak_rss_mb": peak_rss_mb()}
            history.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            log.info("epoch %d: train loss %.4f, val loss %.4f (%.1fs, %s %.0f)", epoch, row["train_loss"],
                     row["val_loss"], seconds, unit, row[unit])
            position = {"epoch": epoch + 1, "batch": 0, "step": position["step"], "losses": []}
            save_state()
    return history[-1] if history else {}
