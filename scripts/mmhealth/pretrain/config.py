"""Typed pretraining settings (config `pretrain.<modality>`); defaults and bounds live in the config schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class PretrainConfig:
    """config `pretrain.<modality>` (every modality shares one schema definition). Build with `from_config`."""

    SECTION: ClassVar[str] = "pretrain.text"
    init: dict
    init_from: str | None
    epochs: int
    max_steps: int
    lr: float
    batch_size: int
    weight_decay: float
    dropout: float
    mask_prob: float
    seed: int
    checkpoint_every: int
    keep_checkpoint: bool
    log_every: int
    loader_workers: int
    shuffle_buffer: int
