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
import resource
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from mmhealth.predict.inference import inference_rows, predict_proba
from mmhealth.train import checkpoint
from mmhealth.train.bags import Units
from mmhealth.train.config import FinetuneConfig
from mmhealth.train.device import autocast, compiled, to_device
from mmhealth.train.distributed import Processes, wrap
from mmhealth.train.models import FusionClassifier
from mmhealth.train.stream import Augment, BagStream, batches_per_rank, loader

log = logging.getLogger("train")
CALIBRATION_UNITS = 1024  # training units whose fused vectors set the head's batch-norm statistics


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
def calibrate_norm(model: FusionClassifier, data: Units, batch_size: int, device: torch.device) -> None:
    """Set the head's batch-norm statistics to the mean and variance of the fused vectors of (up to
    CALIBRATION_UNITS of) `data`, computed in eval mode with the rows inference uses ("precise BN")."""
    model.eval()
    units = np.unique(np.linspace(0, len(data) - 1, min(len(data), CALIBRATION_UNITS)).astype(np.int64))
    fused = []
    stream = BagStream(data, batch_size, inference_rows(model), train=False, subset=units)
    for batch in loader(stream, 0, device):
        with autocast(device):
            fused.append(model.fuse(to_device(batch, device), batch["units"]).float())
    vectors = torch.cat(fused)
    norm = model.head[0]
    norm.running_mean.copy_(vectors.mean(dim=0))
    norm.running_var.copy_(vectors.var(dim=0) if len(vectors) > 1 else torch.ones_like(norm.running_var))


def evaluate_split(model: FusionClassifier, data: Units, cfg: FinetuneConfig, device: torch.device) -> dict:
    prob = predict_proba(model, data, cfg.batch_size, inference_rows(model), device)
    loss = float(-np.log(np.clip(prob[np.arange(len(data)), data.labels], 1e-7, 1)).mean())
    auroc = math.nan
    if len(np.unique(data.labels)) > 1:
        auroc = float(roc_auc_score(data.labels, prob[:, 1]) if prob.shape[1] == 2 else
                      roc_auc_score(data.labels, prob, multi_class="ovr"))
    return {"loss": loss, "auroc": auroc}


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """'balanced' weights n / (k * n_c), as scikit-learn computes them (absent classes weigh 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def train_stream(data: Units, cfg: FinetuneConfig, epoch: int, procs: Processes,
                 augment: Augment | None) -> BagStream:
    return BagStream(data, cfg.batch_size, cfg.max_rows_per_bag, train=True, seed=cfg.seed, epoch=epoch,
                     rank=procs.rank, world=procs.world, workers=max(1, cfg.loader_workers),
                     shuffle_buffer=cfg.shuffle_buffer, augment=augment, drop_last=procs.world > 1)


def step_flops(model: FusionClassifier, params: dict[str, int], inputs: dict) -> float:
    """Training FLOPs of a step, 6 x parameters x tokens (or patches) per encoder: the usual estimate
    for a transformer's forward and backward, attention's sequence-squared term left out. `inputs` are
    the batch's CPU tensors (counting tokens on the GPU would wait for it at every step)."""
    total = 0.0
    for m, rows in inputs.items():
        if "attention_mask" in rows:
            tokens = float(rows["attention_mask"].sum())
        else:
            patches = model.encoders[m].config.patch_size ** 2
            tokens = rows["pixel_values"].shape[0] * rows["pixel_values"][0, 0].numel() / patches
        total += 6.0 * params[m] * tokens
    return total


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes); loader workers not included."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def speed_figures(units: int, flops: float, seconds: float, waited: float, device: torch.device) -> dict:
    row = {"samples_per_s": round(units / max(seconds, 1e-9), 2),
           "data_wait_fraction": round(waited / max(seconds, 1e-9), 4), "peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        row["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        row["tflops"] = round(flops / max(seconds, 1e-9) / 1e12, 3)
    return row


def training_state(model, optimizer, scheduler, position: dict, best: dict, best_state, history: list,
                   fingerprint: str) -> dict:
    return {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_states(), "position": position,
            "best": best, "best_state": best_state or {}, "history": history}


def resume(folder: Path | None, fingerprint: str, model, optimizer, scheduler) -> dict | None:
    """The saved state if it was written by a run of the same settings and inputs (loaded into the model,
    optimizer, scheduler and RNGs); None, with a warning, for another run's checkpoint."""
    state = checkpoint.load(folder) if folder is not None else None
    if state is None:
        return None
    if state["fingerprint"] != fingerprint:
        log.warning("ignoring checkpoint %s: written by a run of other settings or inputs", folder)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    checkpoint.set_rng_states(state["rng"])
    position = state["position"]
    log.info("resumed from step %d (epoch %d)", position["step"], position["epoch"])
    return state


def fit(model: FusionClassifier, train: Units, val: Units, cfg: FinetuneConfig, device: torch.device,
        history_path: Path, augment: Augment | None = None, procs: Processes | None = None,
        checkpoints: Path | None = None, fingerprint: str = "") -> dict:
    """Train with early stopping on validation loss; leaves the best epoch's weights in `model`.

    Under torchrun every rank streams its own share of the units (`train.stream`) in full batches, as many
    as the smallest rank has; each rank validates on the whole val split with the synchronised weights, so
    all stop at the same epoch.
    With `checkpoints` (a folder), rank 0 saves the whole training state there every
    `cfg.checkpoint_every` optimizer steps and at each epoch end, and a later call with the same
    `fingerprint` continues from it: on CPU the result is bit for bit that of an uninterrupted run.
    """
    procs = procs or Processes()
    model.to(device)
    trained = compiled(wrap(model, procs), cfg.compile)
    optimizer = optimizer_for(model, cfg)
    # Every rank takes as many batches as the smallest rank has (DDP steps together).
    batches_per_epoch = batches_per_rank(train, np.arange(len(train)), procs.world, max(1, cfg.loader_workers),
                                         cfg.batch_size, drop_last=procs.world > 1)
    scheduler = warmup_then_linear(optimizer, math.ceil(batches_per_epoch / cfg.grad_accum_steps) * cfg.epochs)
    weight = None
    if cfg.class_weights == "balanced":
        weight = torch.as_tensor(class_weights(train.labels, int(model.head[-1].out_features)),
                                 dtype=torch.float32, device=device)
        log.info("class weights %s", [round(w, 3) for w in weight.tolist()])
    best, best_state, stale, history = {"val_loss": math.inf, "epoch": 0}, None, 0, []
    position = {"epoch": 1, "batch": 0, "step": 0, "losses": [], "stopped": False}
    state = resume(checkpoints, fingerprint, model, optimizer, scheduler)
    if state is not None:
        position, history, best_state = state["position"], state["history"], state["best_state"] or None
        best = {k: v for k, v in state["best"].items() if k != "stale"}
        stale = state["best"].get("stale", 0)

    encoder_params = {m: sum(p.numel() for p in e.parameters()) for m, e in model.encoders.items()}

    def save_state() -> None:
        if checkpoints is not None and procs.is_main:
            # Losses stay on the device until needed: reading each at its step would wait for the GPU.
            saved = {**position, "losses": [float(x) for x in position["losses"]]}
            checkpoint.save(checkpoints, training_state(model, optimizer, scheduler, saved,
                                                        {**best, "stale": stale}, best_state, history, fingerprint))

    with (history_path if procs.is_main else Path(os.devnull)).open("w") as out:
        for row in history:
            out.write(json.dumps(row) + "\n")
        for epoch in range(position["epoch"], cfg.epochs + 1):
            if position["stopped"]:
                break
            model.train()
            first, losses = position["batch"], list(position["losses"])
            started, waited, flops, units_seen = time.perf_counter(), 0.0, 0.0, 0
            window = {"started": started, "waited": 0.0, "flops": 0.0, "units": 0}
            batches = iter(loader(train_stream(train, cfg, epoch, procs, augment), cfg.loader_workers, device))
            for _ in range(first):  # a resumed epoch: the batches already trained on are rebuilt and skipped
                next(batches)
            for b in tqdm(range(first, batches_per_epoch), desc=f"epoch {epoch}", mininterval=5,
                          disable=not procs.is_main):
                asked = time.perf_counter()
                batch = next(batches)
                wait = time.perf_counter() - asked
                waited, window["waited"] = waited + wait, window["waited"] + wait
                units = batch["units"]
                last_of_step = (b + 1) % cfg.grad_accum_steps == 0 or b + 1 == batches_per_epoch
                if units >= 2:  # the head's batch norm needs two units; the unit is seen again next epoch
                    inputs = to_device(batch, device)
                    with autocast(device):
                        logits = trained(inputs, units)
                    loss = torch.nn.functional.cross_entropy(
                        logits.float(), batch["labels"].to(device, non_blocking=True), weight=weight,
                        label_smoothing=cfg.label_smoothing)
                    (loss / cfg.grad_accum_steps).backward()
                    losses.append(loss.detach())
                    units_seen, window["units"] = units_seen + units, window["units"] + units
                    if device.type == "cuda":
                        f = step_flops(model, encoder_params, batch["inputs"])
                        flops, window["flops"] = flops + f, window["flops"] + f
                if not last_of_step:
                    continue
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                position = {"epoch": epoch, "batch": b + 1, "step": position["step"] + 1, "losses": losses,
                            "stopped": False}
                if cfg.log_every and position["step"] % cfg.log_every == 0 and losses:
                    seconds = time.perf_counter() - window["started"]
                    out.write(json.dumps({"kind": "step", "epoch": epoch, "step": position["step"],
                                          "loss": float(losses[-1]), "lr": scheduler.get_last_lr()[0],
                                          **speed_figures(window["units"] * procs.world, window["flops"] * procs.world,
                                                          seconds, window["waited"], device)}) + "\n")
                    out.flush()
                    window = {"started": time.perf_counter(), "waited": 0.0, "flops": 0.0, "units": 0}
                if cfg.checkpoint_every and position["step"] % cfg.checkpoint_every == 0:
                    save_state()
            seconds = time.perf_counter() - started
            calibrate_norm(model, train, cfg.batch_size, device)
            scores = evaluate_split(model, val, cfg, device)
            row = {"kind": "epoch", "epoch": epoch, "step": position["step"],
                   "train_loss": float(np.mean([float(x) for x in losses])) if losses else math.nan, "val_loss": scores["loss"],
                   "val_auroc": scores["auroc"], "lr": scheduler.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - started, 2), "processes": procs.world,
                   **speed_figures(units_seen * procs.world, flops * procs.world, seconds, waited, device)}
            history.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            log.info("epoch %d: train loss %.4f, val loss %.4f, val AUROC %.3f (%.1fs, %.1f samples/s, "
                     "data wait %.1f%%)", epoch, row["train_loss"], row["val_loss"], row["val_auroc"],
                     row["seconds"], row["samples_per_s"], 100 * row["data_wait_fraction"])
            stopped = False
            if scores["loss"] < best["val_loss"] - 1e-4:
                best = {"val_loss": scores["loss"], "val_auroc": scores["auroc"], "epoch": epoch}
                best_state, stale = copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                stopped = stale >= cfg.patience
                if stopped:
                    log.info("early stop: no val loss improvement for %d epochs", stale)
            position = {"epoch": epoch + 1, "batch": 0, "step": position["step"], "losses": [],
                        "stopped": stopped}
            save_state()
    if best_state is not None:
        model.load_state_dict(best_state)
    return best


