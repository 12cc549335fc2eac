"""Fine-tune one task: encoders f_k per modality, the fusion head g, saved as a folder `transformers` loads.

The loop itself is `mmhealth.train.loop`; this module builds the model from the task's config, reads the
declared token shards, and writes the model folder with its card.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmhealth.core.config import from_config
from mmhealth.core.parquet_io import read_metadata
from mmhealth.train import checkpoint
from mmhealth.train.bags import Units, build_units, read_labels, read_row_ids
from mmhealth.train.calibrate import save_calibration
from mmhealth.train.config import FinetuneConfig
from mmhealth.train.device import allow_tf32
from mmhealth.train.distributed import device_for, setup, teardown
from mmhealth.train.loop import fit
from mmhealth.train.models import (
    ClassifierSpec,
    EncoderInit,
    FusionClassifier,
    apply_strategy,
    merge_adapters,
    new_encoder,
    pretrained_encoder,
)

log = logging.getLogger("train")


@dataclass
class TaskInputs:
    """The files a training job reads, exactly as its rule declares them."""

    labels: Path
    shards: dict[str, dict[str, list[Path]]]  # split -> modality -> token shard files
    tokenizers: dict[str, Path]  # modality -> tokenizer folder

    def files(self) -> list[Path]:
        """Every input file, tokenizer files included (what a checkpoint's fingerprint covers)."""
        shards = [p for by in self.shards.values() for paths in by.values() for p in paths]
        tokenizer_files = [p for d in self.tokenizers.values() for p in sorted(Path(d).iterdir()) if p.is_file()]
        return [Path(self.labels), *map(Path, shards), *tokenizer_files]


def token_limits(tokenizer_dir: Path, shard: Path) -> tuple[int, int]:
    """(vocab size, longest row) of a token modality, from its tokenizer and a shard's metadata."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).get_vocab_size()
    max_length = int(read_metadata(shard).get("params", {}).get("max_length", 512))
    return vocab, max_length


def build_classifier(task: str, modalities: list[str], classes: list[str], model_spec: dict,
                     cfg: FinetuneConfig, inputs: TaskInputs, train: Units) -> FusionClassifier:
    init = from_config(EncoderInit, model_spec.get("init"))
    encoders = {}
    for m in modalities:
        path = model_spec.get("encoders", {}).get(m) or model_spec.get("path")
        if path:
            encoders[m] = pretrained_encoder(path, dropout=cfg.dropout)
            if m != "image":
                vocab, _ = token_limits(inputs.tokenizers[m], inputs.shards["train"][m][0])
                if vocab > encoders[m].config.vocab_size:
                    raise ValueError(f"{m} tokens of tokenizer {inputs.tokenizers[m]} use {vocab} ids but the "
                                     f"encoder {path} knows {encoders[m].config.vocab_size}: the ids would land on other "
                                     "rows of its embeddings; tokenise with the encoder's own tokenizer")
        elif m == "image":
            encoders[m] = new_encoder(m, init, cfg.dropout, image_shape=train.image_shape)
        else:
            vocab, max_length = token_limits(inputs.tokenizers[m], inputs.shards["train"][m][0])
            encoders[m] = new_encoder(m, init, cfg.dropout, vocab_size=vocab, max_length=max_length)
    width = max(int(e.config.hidden_size) for e in encoders.values())
    spec = ClassifierSpec(task=task, modalities=modalities, classes=classes, fusion_dim=width,
                          dropout=cfg.dropout, max_rows_per_bag=cfg.max_rows_per_bag,
                          encoder_hidden={m: int(e.config.hidden_size) for m, e in encoders.items()})
    model = FusionClassifier(spec, encoders)
    apply_strategy(model, cfg.strategy, cfg.trainable_layers, cfg.lora_r)
    return model


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


# Settings that change how a run goes but not what it computes: a checkpoint stays valid across them.
RUN_ONLY_SETTINGS = ("checkpoint_every", "keep_checkpoint", "log_every")


def run_finetune(task: str, modalities: list[str], inputs: TaskInputs, model_spec: dict, finetune: dict,
                 out_dir: Path, checkpoint_dir: Path | None = None) -> dict:
    """Train the task on its train split with early stopping on val, and save the model folder (rank 0).

    With `checkpoint_dir`, training resumes from the checkpoint there when one of the same settings and
    inputs exists, and the folder is removed once the model folder is written (unless keep_checkpoint).
    """
    procs = setup()
    cfg = from_config(FinetuneConfig, finetune)
    torch.manual_seed(cfg.seed)
    device = device_for(procs)
    allow_tf32(cfg.tf32)
    settings = {"task": task, "modalities": modalities, "model": model_spec, "processes": procs.world,
                "finetune": {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_SETTINGS}}
    fingerprint = checkpoint.fingerprint(settings, inputs.files())

    labels = read_labels(inputs.labels)
    classes = sorted(set(labels.column("label").to_pylist()))
    data = {}
    for split in ("train", "val"):
        rows = {m: read_row_ids(inputs.shards[split][m], m) for m in modalities}
        data[split], dropped = build_units(read_labels(inputs.labels, split), classes, rows, inputs.shards[split])
        log.info("%s: %d units (%d labelled units without any rows)", split, len(data[split]), dropped)
        if len(data[split]) == 0:
            raise ValueError(f"task {task}: no {split} units with data; check labels and inputs")

    model = build_classifier(task, modalities, classes, model_spec, cfg, inputs, data["train"])
    model.spec.record_level = labels.column("record_id").null_count < labels.num_rows
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("device %s, %d parameters (%d trainable), strategy %s", device,
             sum(p.numel() for p in model.parameters()), trainable, cfg.strategy)

    out_dir.mkdir(parents=True, exist_ok=True)
    augment = None
    if cfg.reverse_complement and "dna" in modalities:
        from mmhealth.train.dna_augment import reverse_complement_augmentation

        augment = reverse_complement_augmentation(inputs.tokenizers["dna"])
    best = fit(model, data["train"], data["val"], cfg, device, out_dir / "training.jsonl", augment, procs,
               checkpoint_dir, fingerprint)
    if procs.is_main:
        merge_adapters(model)
        model.cpu().save(out_dir, {m: inputs.tokenizers[m] for m in modalities})
        (out_dir / "labels.json").write_text(json.dumps({"classes": classes}, indent=2) + "\n")
        (out_dir / "README.md").write_text(model_card(task, modalities, classes, cfg, model_spec, best,
                                                      {s: len(d) for s, d in data.items()}))
        log.info("saved %s (best epoch %s)", out_dir, best.get("epoch"))
        save_calibration(out_dir, data["val"])  # T belongs to the model: evaluation and prediction apply it
        if checkpoint_dir is not None and not cfg.keep_checkpoint:
            checkpoint.remove(checkpoint_dir)
    teardown(procs)
    return best
