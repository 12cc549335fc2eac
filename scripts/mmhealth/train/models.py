"""The classifier: pretrained or freshly configured encoders f_k, pooled per bag, fused as g(sum_k W_k f_k + b).

Encoders are plain `transformers` models (BERT for token modalities, ViT for images) so a saved task folder
loads with `AutoModel.from_pretrained(folder / "encoder-<modality>")`; the fusion head is a safetensors file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

HEAD_FILE = "fusion_head.safetensors"
SPEC_FILE = "mmhealth_model.json"


@dataclass
class EncoderInit:
    """A freshly initialised encoder's size (config `tasks.<t>.model.init`). Build with `from_config`."""

    SECTION: ClassVar[str] = "tasks.*.model.init"
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int | None
    patch_size: int


@dataclass
class ClassifierSpec:
    """Everything needed to rebuild the classifier around saved encoders."""

    task: str
    modalities: list[str]
    classes: list[str]
    fusion_dim: int
    dropout: float = 0.1
    max_rows_per_bag: int = 8
    encoder_hidden: dict[str, int] = field(default_factory=dict)
    record_level: bool = False  # trained on labels per record (series, FASTA record), not per subject

    def save(self, folder: Path) -> None:
        (folder / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ClassifierSpec:
        return cls(**json.loads((folder / SPEC_FILE).read_text()))


def encoder_dir(folder: Path, modality: str) -> Path:
    return Path(folder) / f"encoder-{modality}"


def new_encoder(modality: str, init: EncoderInit, dropout: float, vocab_size: int = 0, max_length: int = 512,
                image_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """A randomly initialised encoder from a transformers config (no download, no hub)."""
    # transformers costs seconds to import: only when a model is built.
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    common = dict(hidden_size=init.hidden_size, num_hidden_layers=init.num_layers,
                  num_attention_heads=init.num_heads,
                  intermediate_size=init.intermediate_size or 4 * init.hidden_size,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                  attn_implementation="sdpa")  # fused attention kernels (flash / memory-efficient on GPUs)
    if modality == "image":
        channels, height, width = image_shape
        if height != width or height % init.patch_size:
            raise ValueError(f"image {height}x{width} does not tile into {init.patch_size}-pixel patches")
        return ViTModel(ViTConfig(image_size=height, patch_size=init.patch_size, num_channels=channels, **common),
                        add_pooling_layer=False)
    return BertModel(BertConfig(vocab_size=vocab_size, max_position_embeddings=max_length, pad_token_id=0,
                                **common), add_pooling_layer=False)


def pretrained_encoder(path: str | Path, dropout: float | None = None) -> nn.Module:
    """A local transformers folder; never the hub, never remote code."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if dropout is not None and hasattr(config, "hidden_dropout_prob"):
        config.hidden_dropout_prob = dropout
    try:
        model = AutoModel.from_pretrained(path, config=config, local_files_only=True, attn_implementation="sdpa")
    except ValueError:  # an architecture without an SDPA attention in this transformers version
        model = AutoModel.from_pretrained(path, config=config, local_files_only=True)
    return getattr(model, "base_model", model)


def encoder_width(encoder: nn.Module) -> int:
    return int(encoder.config.hidden_size)


class FusionClassifier(nn.Module):
    """logits = g(sum_k W_k mean_rows(f_k(rows)) + b); one modality is the K = 1 case of the same model.

    g starts with a batch norm: pooled encoder states differ little between subjects next to what they
    share, and standardising across the batch is what lets a fresh encoder's signal reach the logits. Its
    running statistics are set by `train.calibrate_norm` from fused vectors computed as inference computes
    them: averages tracked while the encoders change under fine-tuning are stale, and squash every
    prediction towards one class.
    """

    def __init__(self, spec: ClassifierSpec, encoders: dict[str, nn.Module]):
        super().__init__()
        self.spec = spec
        self.encoders = nn.ModuleDict(encoders)
        self.project = nn.ModuleDict({m: nn.Linear(encoder_width(e), spec.fusion_dim, bias=False)
                                      for m, e in encoders.items()})
        self.bias = nn.Parameter(torch.zeros(spec.fusion_dim))
        self.head = nn.Sequential(nn.BatchNorm1d(spec.fusion_dim), nn.GELU(), nn.Dropout(spec.dropout),
                                  nn.Linear(spec.fusion_dim, len(spec.classes)))

    def embed_rows(self, modality: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One vector per row: the mean of its token (or patch) states, padding excluded.

        Mean pooling rather than [CLS]: a freshly initialised encoder's [CLS] barely depends on the content,
        and sentence encoders are trained for mean pooling.
        """
        encoder = self.encoders[modality]
        if modality == "image":
            return encoder(pixel_values=inputs["pixel_values"]).last_hidden_state.mean(dim=1)
        mask = inputs["attention_mask"]
        states = encoder(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]], n_units: int) -> torch.Tensor:
        return self.head(self.fuse(inputs, n_units))

    def fuse(self, inputs: dict[str, dict[str, torch.Tensor]], n_units: int) -> torch.Tensor:
        """sum_k W_k f_k + b per unit: what the head g reads."""
        fused = self.bias.expand(n_units, -1)
        for modality, rows in inputs.items():
            vectors = self.embed_rows(modality, rows).float()
            index = rows["bag_index"]
            sums = torch.zeros(n_units, vectors.shape[1], device=vectors.device).index_add_(0, index, vectors)
            counts = torch.bincount(index, minlength=n_units).clamp(min=1).unsqueeze(1)
            # A unit with no rows in this modality adds nothing: its mean is a zero vector.
            fused = fused + self.project[modality](sums / counts)
        return fused

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("encoders.")}

    def save(self, folder: Path, tokenizer_dirs: dict[str, Path]) -> None:
        """save_pretrained per encoder (+ its tokenizer), the head as safetensors, the spec as JSON."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for modality, encoder in self.encoders.items():
            target = encoder_dir(folder, modality)
            encoder.save_pretrained(target, safe_serialization=True)
            written = {p.name for p in target.iterdir()}
            # The tokenizer (or image preprocessor) travels with its encoder: the folder alone can predict.
            for source in Path(tokenizer_dirs[modality]).iterdir():
                if source.is_file() and source.name not in written:
                    shutil.copy2(source, target / source.name)
        save_file(self.head_state(), folder / HEAD_FILE)
        self.spec.save(folder)


def load_classifier(folder: str | Path) -> FusionClassifier:
    """Rebuild a saved classifier from its folder alone."""
    folder = Path(folder)
    spec = ClassifierSpec.load(folder)
    encoders = {m: pretrained_encoder(encoder_dir(folder, m)) for m in spec.modalities}
    model = FusionClassifier(spec, encoders)
    missing, unexpected = model.load_state_dict(load_file(folder / HEAD_FILE), strict=False)
    if unexpected or any(not k.startswith("encoders.") for k in missing):
        raise ValueError(f"{folder / HEAD_FILE} does not match the spec: missing {missing}, unexpected {unexpected}")
    return model.eval()


def apply_strategy(model: FusionClassifier, strategy: str, trainable_layers: int = 1, lora_r: int = 8) -> None:
    """Which encoder weights train: none (head), the top layers (partial), all (full) or LoRA adapters."""
    if strategy == "full":
        return
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        for modality, encoder in list(model.encoders.items()):
            config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=model.spec.dropout,
                                target_modules=["query", "value"])
            model.encoders[modality] = get_peft_model(encoder, config)
        return
    for encoder in model.encoders.values():
        encoder.requires_grad_(False)
        if strategy == "partial" and trainable_layers > 0:
            layers = encoder.encoder.layer
            for layer in layers[len(layers) - trainable_layers:]:
                layer.requires_grad_(True)
            final_norm = getattr(encoder, "layernorm", None)  # ViT's last norm; BERT has none after the layers
            if final_norm is not None:
                final_norm.requires_grad_(True)
    if strategy not in ("head", "partial"):
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}")


def merge_adapters(model: FusionClassifier) -> None:
    """Fold LoRA weights into the encoders so the artifact is a plain transformers model."""
    for modality, encoder in list(model.encoders.items()):
        if hasattr(encoder, "merge_and_unload"):
            model.encoders[modality] = encoder.merge_and_unload()
