"""Pretrain one modality on its train-split token rows and save a folder plain `transformers` loads.

The folder holds the `save_pretrained` model (`AutoModelForMaskedLM` for token modalities, `AutoModel` gives
the encoder a task fine-tunes; images: `AutoModel` gives the ViTModel), the tokenizer or image preprocessor
the token shards were made with, `training.jsonl` (the loss curve) and a card (`README.md`, `pretrain_card.json`).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from mmhealth.core.config import from_config
from mmhealth.core.modalities import TOKEN_MODALITIES
from mmhealth.core.parquet_io import read_metadata
from mmhealth.pretrain.config import PretrainConfig
from mmhealth.pretrain.loop import Objective, pretrain_fit, row_units
from mmhealth.pretrain.models import build_masked_image_model, build_masked_lm, token_vocab
from mmhealth.train import checkpoint
from mmhealth.train.distributed import device_for, setup, teardown

log = logging.getLogger("pretrain")
CARD_FILE = "pretrain_card.json"
# Settings that change how a run goes but not what it computes: a checkpoint stays valid across them.
RUN_ONLY_SETTINGS = ("checkpoint_every", "keep_checkpoint", "log_every")


def objective_for(modality: str, cfg: PretrainConfig, tokenizer_dir: Path, shard: Path) -> Objective:
    """Masking of the modality: k-mer spans for overlapping DNA k-mers (k read from the shard's params)."""
    if modality not in TOKEN_MODALITIES:
        return Objective(modality, cfg.mask_prob)
    vocab, specials, mask_id = token_vocab(tokenizer_dir)
    params = read_metadata(shard).get("params", {})
    span = int(params["k"]) if modality == "dna" and params.get("overlapping", False) else 1
    return Objective(modality, cfg.mask_prob, vocab, tuple(specials), mask_id, span)


def build_model(modality: str, cfg: PretrainConfig, objective: Objective, shard: Path, image_shape):
    if modality in TOKEN_MODALITIES:
        max_length = int(read_metadata(shard).get("params", {}).get("max_length", 512))
        return build_masked_lm(cfg.init, cfg.dropout, objective.vocab_size, max_length, cfg.init_from)
    return build_masked_image_model(cfg.init, cfg.dropout, image_shape, cfg.init_from)


def card(modality: str, cfg: PretrainConfig, objective: Objective, last: dict, rows: dict[str, int],
         model: torch.nn.Module) -> dict:
    import transformers

    method = ("masked-image modelling (SimMIM, ViTForMaskedImageModeling): masked patches regressed (L1)"
              if modality == "image" else
              f"masked-token modelling (BertForMaskedLM), {cfg.mask_prob:.0%} of tokens, 80% [MASK] / 10% "
              f"random / 10% kept" + (f", in whole spans of {objective.span} overlapping k-mers"
                                      if objective.span > 1 else ""))
    return {"modality": modality, "objective": method, "architecture": model.config.architectures or
            [type(model).__name__], "parameters": sum(p.numel() for p in model.parameters()),
            "init": cfg.init_from or f"fresh, {json.dumps(cfg.init)}", "settings": asdict(cfg),
            "rows": rows, "last_epoch": last,
            "software": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()}}


def card_markdown(info: dict) -> str:
    load = ("AutoModelForMaskedLM.from_pretrained(folder)  # or AutoModel for the encoder alone"
            if info["modality"] in TOKEN_MODALITIES else "AutoModel.from_pretrained(folder)  # a ViTModel")
    last = info["last_epoch"]
    return f"""# mmhealth pretrained encoder: {info['modality']}

- **Objective**: {info['objective']}.
- **Data**: {info['rows']['train']} train-split rows of this site's token shards (labelled or not);
  validation loss on {info['rows']['val']} val-split rows. No test row is read.
- **Start**: {info['init']}; {info['parameters']} parameters.
- **Last epoch**: train loss {last.get('train_loss', float('nan')):.4f}, validation loss
  {last.get('val_loss', float('nan')):.4f} (curve: `training.jsonl`).
- **Load**: `{load}`, `local_files_only=True`; the tokenizer (or `preprocessor.json`) in this folder
  is the one the token shards were made with.
- **Use**: a task fine-tunes from it with `model: {{pretrained: true}}` (config/README.md).
- **Software**: {json.dumps(info['software'])}.
"""


def run_pretrain(modality: str, shards: dict[str, list[Path]], tokenizer_dir: Path, pretrain: dict,
                 out_dir: Path, checkpoint_dir: Path | None = None) -> dict:
    """Pretrain on `shards["train"]`, report the masked loss on `shards["val"]`, save the folder (rank 0)."""
    procs = setup()
    cfg = from_config(PretrainConfig, pretrain)
    torch.manual_seed(cfg.seed)
    device = device_for(procs)
    tokenizer_files = sorted(p for p in Path(tokenizer_dir).iterdir() if p.is_file())
    settings = {"modality": modality, "processes": procs.world,
                "pretrain": {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_SETTINGS}}
    fingerprint = checkpoint.fingerprint(settings, [*shards["train"], *shards["val"], *tokenizer_files])
    train, val = row_units(shards["train"], modality), row_units(shards["val"], modality)
    log.info("%s: %d train rows, %d val rows", modality, len(train), len(val))
    if len(train) == 0:
        raise ValueError(f"pretrain {modality}: the train split has no rows")
    objective = objective_for(modality, cfg, tokenizer_dir, shards["train"][0])
    model = build_model(modality, cfg, objective, shards["train"][0], train.image_shape)
    log.info("device %s, %s with %d parameters, mask span %d", device, type(model).__name__,
             sum(p.numel() for p in model.parameters()), objective.span)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = pretrain_fit(model, objective, train, val, cfg, device, out_dir / "training.jsonl", procs,
                        checkpoint_dir, fingerprint)
    if procs.is_main:
        model.cpu().save_pretrained(out_dir, safe_serialization=True)
        written = {p.name for p in out_dir.iterdir()}
        for source in tokenizer_files:  # the tokenizer (or preprocessor) the shards were made with
            if source.name not in written:
                shutil.copy2(source, out_dir / source.name)
        info = card(modality, cfg, objective, last, {"train": len(train), "val": len(val)}, model)
        (out_dir / CARD_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (out_dir / "README.md").write_text(card_markdown(info))
        log.info("saved %s", out_dir)
        if checkpoint_dir is not None and not cfg.keep_checkpoint:
            checkpoint.remove(checkpoint_dir)
    teardown(procs)
    return last
