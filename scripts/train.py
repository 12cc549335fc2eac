"""Fine-tune one task: encoders f_k per modality, fusion head g, AdamW, early stopping on the val split.

One loop for CPU and GPU (bf16 autocast on CUDA). The best epoch by validation loss is what gets saved.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from bags import BagData, build_bags, collate, load_modality_rows, read_labels
from distributed import Processes, device_for, rank_slice, setup, teardown, wrap
from models import (
    ClassifierSpec,
    EncoderInit,
    FusionClassifier,
    apply_strategy,
    merge_adapters,
    new_encoder,
    pretrained_encoder,
)
from parquet_io import read_metadata

log = logging.getLogger("train")
INFERENCE_ROWS_PER_BAG = 64  # a bag's rows seen when predicting (evenly spaced beyond this)
CALIBRATION_UNITS = 1024  # training units whose fused vectors set the head's batch-norm statistics


@dataclass
class FinetuneConfig:
    """config `tasks.<t>.finetune`."""

    strategy: str = "full"
    epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 16
    weight_decay: float = 0.01
    dropout: float = 0.1
    patience: int = 2
    max_rows_per_bag: int = 8
    trainable_layers: int = 1
    lora_r: int = 8
    label_smoothing: float = 0.1
    reverse_complement: bool = False
    seed: int = 0


def dna_k(tokens_root: Path) -> int:
    from kmers import KMER_CONFIG_FILE

    return int(json.loads((tokens_root / "dna" / "tokenizer" / KMER_CONFIG_FILE).read_text())["k"])


def reverse_complement_half(batch: dict, k: int, rng: np.random.Generator) -> None:
    """Augmentation: each DNA row of the batch becomes its reverse complement with probability 1/2
    (a read and its reverse complement carry the same biology)."""
    from kmers import reverse_complement_ids

    rows = batch["inputs"].get("dna")
    if rows is None:
        return
    ids, mask = rows["input_ids"], rows["attention_mask"].bool()
    for i in np.flatnonzero(rng.random(len(ids)) < 0.5):
        ids[i, mask[i]] = torch.as_tensor(reverse_complement_ids(ids[i, mask[i]].numpy(), k), dtype=ids.dtype)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on GPUs; plain fp32 on CPU, where bf16 is slower on most hosts."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(batch: dict, device: torch.device) -> dict:
    return {m: {k: v.to(device, non_blocking=True) for k, v in t.items()} for m, t in batch["inputs"].items()}


def token_limits(tokens_root: Path, modality: str) -> tuple[int, int]:
    """(vocab size, longest row) of a token modality, from its tokenizer and shard metadata."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokens_root / modality / "tokenizer" / "tokenizer.json")).get_vocab_size()
    shard = next((tokens_root / modality / "train").glob("shard-*.parquet"))
    max_length = int(read_metadata(shard).get("params", {}).get("max_length", 512))
    return vocab, max_length


def build_classifier(task: str, modalities: list[str], classes: list[str], model_spec: dict,
                     cfg: FinetuneConfig, tokens_root: Path, train: BagData) -> FusionClassifier:
    init = EncoderInit(**model_spec.get("init", {}))
    encoders = {}
    for m in modalities:
        path = model_spec.get("encoders", {}).get(m) or model_spec.get("path")
        if path:
            encoders[m] = pretrained_encoder(path, dropout=cfg.dropout)
            if m != "image":
                vocab, _ = token_limits(tokens_root, m)
                if vocab > encoders[m].config.vocab_size:
                    raise ValueError(f"tokens of {m} use {vocab} ids but {path} knows "
                                     f"{encoders[m].config.vocab_size}: set tokenize.{m}.tokenizer_path to it")
        elif m == "image":
            encoders[m] = new_encoder(m, init, cfg.dropout, image_shape=train.rows[m].image_shape)
        else:
            vocab, max_length = token_limits(tokens_root, m)
            encoders[m] = new_encoder(m, init, cfg.dropout, vocab_size=vocab, max_length=max_length)
    width = max(int(e.config.hidden_size) for e in encoders.values())
    spec = ClassifierSpec(task=task, modalities=modalities, classes=classes, fusion_dim=width,
                          dropout=cfg.dropout, max_rows_per_bag=cfg.max_rows_per_bag,
                          encoder_hidden={m: int(e.config.hidden_size) for m, e in encoders.items()})
    model = FusionClassifier(spec, encoders)
    apply_strategy(model, cfg.strategy, cfg.trainable_layers, cfg.lora_r)
    return model


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
def predict_proba(model: FusionClassifier, data: BagData, batch_size: int, rows_per_bag: int,
                  device: torch.device) -> np.ndarray:
    """Class probabilities per unit, with evenly spaced rows when a bag is larger than rows_per_bag."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        units = np.arange(start, min(start + batch_size, len(data)))
        batch = collate(data, units, rows_per_bag)
        with autocast(device):
            logits = model(to_device(batch, device), len(units))
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.spec.classes)), np.float32)


def inference_rows(model: FusionClassifier) -> int:
    """Rows per bag when predicting: every row up to INFERENCE_ROWS_PER_BAG, at least as many as in training."""
    return max(INFERENCE_ROWS_PER_BAG, model.spec.max_rows_per_bag)


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
        history_path: Path, dna_kmer: int | None = None, procs: Processes | None = None) -> dict:
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
                if cfg.reverse_complement and dna_kmer:
                    reverse_complement_half(batch, dna_kmer, rng)
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


def encoder_source(model_spec: dict, modalities: list[str]) -> str:
    if "path" in model_spec:
        return f"pretrained, local folder {model_spec['path']}"
    given = model_spec.get("encoders", {})
    parts = [f"{m} from {given[m]}" for m in modalities if m in given]
    fresh = [m for m in modalities if m not in given]
    if fresh:
        parts.append(f"{', '.join(fresh)} initialised from config {json.dumps(model_spec.get('init', {}))}")
    return "; ".join(parts)


def model_card(task: str, modalities: list[str], classes: list[str], cfg: FinetuneConfig, model_spec: dict,
               best: dict, n_units: dict[str, int]) -> str:
    import transformers

    return f"""# mmhealth model: {task}

- **Task**: classify {', '.join(modalities)} data of a subject (or record) into {classes}.
- **Architecture**: per modality a transformers encoder (`encoder-<modality>/`, loads with
  `AutoModel.from_pretrained`); each row's token states are mean-pooled, rows mean-pooled per
  subject/record, and the modalities fused as
  g(sum_k W_k f_k + b) by the head in `fusion_head.safetensors` (`mmhealth_model.json` describes it).
- **Encoder source**: {encoder_source(model_spec, modalities)}
- **Fine-tuning**: {json.dumps(asdict(cfg))}
- **Data**: {n_units['train']} training and {n_units['val']} validation units, subject-level split;
  inputs are the pipeline's token shards (tokenizer or preprocessor files sit in each encoder folder).
- **Best epoch**: {best.get('epoch')} (validation loss {best.get('val_loss', float('nan')):.4f},
  validation AUROC {best.get('val_auroc', float('nan')):.3f}). Test metrics: `eval/{task}/metrics.json`.
- **Software**: torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}.

## Intended use and limits
Research use on data prepared by this workflow's ingest and tokenize stages with the same tokenizer. Not a
medical device; validate on your own population before drawing conclusions. Subject ids are keyed pseudonyms.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--modalities", required=True, help="comma-separated")
    parser.add_argument("--tokens-root", required=True, type=Path)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--model-json", default="{}")
    parser.add_argument("--finetune-json", default="{}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    procs = setup()
    torch.set_num_threads(args.threads)
    cfg = FinetuneConfig(**json.loads(args.finetune_json))
    model_spec = json.loads(args.model_json)
    modalities = args.modalities.split(",")
    torch.manual_seed(cfg.seed)
    device = device_for(procs)

    labels = read_labels(args.labels)
    classes = sorted(set(labels.column("label").to_pylist()))
    data = {}
    for split in ("train", "val"):
        rows = {m: load_modality_rows(args.tokens_root, m, split) for m in modalities}
        data[split], dropped = build_bags(read_labels(args.labels, split), classes, rows)
        log.info("%s: %d units (%d labelled units without any rows)", split, len(data[split]), dropped)
        if len(data[split]) == 0:
            raise ValueError(f"task {args.task}: no {split} units with data; check labels and inputs")

    model = build_classifier(args.task, modalities, classes, model_spec, cfg, args.tokens_root, data["train"])
    model.spec.record_level = labels.column("record_id").null_count < labels.num_rows
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("device %s, %d parameters (%d trainable), strategy %s", device,
             sum(p.numel() for p in model.parameters()), trainable, cfg.strategy)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    kmer = dna_k(args.tokens_root) if cfg.reverse_complement and "dna" in modalities else None
    best = fit(model, data["train"], data["val"], cfg, device, args.out_dir / "training.jsonl", kmer, procs)
    if not procs.is_main:
        teardown(procs)
        return
    merge_adapters(model)
    model.cpu().save(args.out_dir, {m: args.tokens_root / m / "tokenizer" for m in modalities})
    (args.out_dir / "labels.json").write_text(json.dumps({"classes": classes}, indent=2) + "\n")
    (args.out_dir / "README.md").write_text(model_card(args.task, modalities, classes, cfg, model_spec, best,
                                                       {s: len(d) for s, d in data.items()}))
    log.info("saved %s (best epoch %s)", args.out_dir, best.get("epoch"))
    teardown(procs)


if __name__ == "__main__":
    main()
