"""Typed fine-tuning settings (config `tasks.<t>.finetune`); defaults and bounds live in the config schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class FinetuneConfig:
    """config `tasks.<t>.finetune`, less `gpus` (the rule's launcher uses it). Build with `from_config`."""

    SECTION: ClassVar[str] = "tasks.*.finetune"
    strategy: str
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    dropout: float
    patience: int
    max_rows_per_bag: int
    trainable_layers: int
    lora_r: int
    label_smoothing: float
    reverse_complement: bool
    seed: int
    class_weights: str
    grad_accum_steps: int
    checkpoint_every: int
    keep_checkpoint: bool
    log_every: int
    loader_workers: int
    shuffle_buffer: int
    compile: bool
    tf32: bool
