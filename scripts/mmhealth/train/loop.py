"""The fine-tuning loop: AdamW with warm-up, early stopping on validation loss, the best epoch kept.

One loop for CPU, one GPU (bf16 autocast) and several under torchrun (DDP). Validation runs through the
inference code, so the model is selected on numbers computed exactly as evaluation computes them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from mmhealth.predict.inference import inference_rows, predict_proba
from mmhealth.train.bags import BagData, collate
from mmhealth.train.config import FinetuneConfig
from mmhealth.train.device import autocast, to_device
from mmhealth.train.distributed import Processes, rank_slice, wrap
from mmhealth.train.models import FusionClassifier

log = logging.getLogger("train")
CALIBRATION_UNITS = 1024  # training units whose fused vectors set the head's batch-norm statistics
Augment = Callable[[dict, np.random.Generator], None]  # changes a collated training batch in place


def optimizer_for(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norms (the usual transformer recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def warmup_then_linear(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, total_steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup + 1))))


@torch.no_grad()
def calibrate_norm(model: FusionClassifier, data: BagData, batch_size: int, device: torch.device) -> None:
    """Set the head's batch-norm statistics to the mean and variance of the fused vectors of (up to
    CALIBRATION_UNITS of) `data`, computed in eval mode with the rows inference uses ("precise BN")."""
    model.eval()
    units = np.unique(np.linspace(0, len(data) - 1, min(len(data), CALIBRATION_UNITS)).astype(np.int64))
    fused = []
    for start in range(0, len(units), batch_size):
        chosen = units[start:start + batch_size]
        with autocast(device):
            fused.append(model.fuse(to_device(collate(data, chosen, inference_rows(model)), device),
                                    len(chosen)).float())
    vectors = torch.cat(fused)
    norm = model.head[0]
    norm.running_mean.copy_(vectors.mean(dim=0))
    norm.running_var.copy_(vectors.var(dim=0) if len(vectors) > 1 else torch.ones_like(norm.running_var))


def evaluate_split(model: FusionClassifier, data: BagData, cfg: FinetuneConfig, device: torch.device) -> dict:
    prob = predict_proba(model, data, cfg.batch_size, inference_rows(model), device)
    loss = float(-np.log(np.clip(prob[np.arange(len(data)), data.labels], 1e-7, 1)).mean())
    auroc = math.nan
    if len(np.unique(data.labels)) > 1:
        auroc = float(roc_auc_score(data.labels, prob[:, 1]) if prob.shape[1] == 2 else
                      roc_auc_score(data.labels, prob, multi_class="ovr"))
    return {"loss": loss, "auroc": auroc}


def fit(model: FusionClassifier, train: BagData, val: BagData, cfg: FinetuneConfig, device: torch.device,
        history_path: Path, augment: Augment | None = None, procs: Processes | None = None) -> dict:
    """Train with early stopping on validation loss; leaves the best epoch's weights in `model`.

    Under torchrun every rank shuffles the units alike (shared seed) and trains on its own slice; each
    rank validates on the whole val split with the synchronised weights, so all stop at the same epoch.
    """
    procs = procs or Processes()
    order_rng = np.random.default_rng(cfg.seed)  # same permutation on every rank
    rng = np.random.default_rng([cfg.seed, procs.rank])  # row sampling and augmentation differ per rank
    model.to(device)
    trained = wrap(model, procs)
    optimizer = optimizer_for(model, cfg)
    steps_per_epoch = math.ceil(len(rank_slice(np.arange(len(train)), procs)) / cfg.batch_size)
    scheduler = warmup_then_linear(optimizer, steps_per_epoch * cfg.epochs)
    best = {"val_loss": math.inf, "epoch": 0}
    best_state, stale = None, 0
    with (history_path if procs.is_main else Path(os.devnull)).open("w") as history:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            started, losses = time.perf_counter(), []
            order = rank_slice(order_rng.permutation(len(train)), procs)
            for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}", mininterval=5,
                              disable=not procs.is_main):
                units = order[start:start + cfg.batch_size]
                if len(units) < 2:
                    continue  # the head's batch norm needs two units; the unit is seen again next epoch
                batch = collate(train, units, cfg.max_rows_per_bag, rng)
                if augment is not None:
                    augment(batch, rng)
                with autocast(device):
                    logits = trained(to_device(batch, device), len(units))
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"].to(device),
                                                         label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
            calibrate_norm(model, train, cfg.batch_size, device)
            scores = evaluate_split(model, val, cfg, device)
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": scores["loss"],
                   "val_auroc": scores["auroc"], "lr": scheduler.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - started, 2), "processes": procs.world,
                   "units_per_s": round(len(order) * procs.world / (time.perf_counter() - started), 1)}
            history.write(json.dumps(row) + "\n")
            history.flush()
            log.info("epoch %d: train loss %.4f, val loss %.4f, val AUROC %.3f (%.1fs)", epoch,
                     row["train_loss"], row["val_loss"], row["val_auroc"], row["seconds"])
            if scores["loss"] < best["val_loss"] - 1e-4:
                best = {"val_loss": scores["loss"], "val_auroc": scores["auroc"], "epoch": epoch}
                best_state, stale = copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    log.info("early stop: no val loss improvement for %d epochs", stale)
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return best
