"""Where tensors run: the device, bf16 autocast and TF32 on GPUs, optional torch.compile, moving batches."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("train")


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on GPUs; plain fp32 on CPU, where bf16 is slower on most hosts."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def allow_tf32(enabled: bool) -> None:
    """TF32 for the fp32 matmuls and convolutions left outside autocast (Ampere and later; no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def compiled(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """torch.compile'd model when asked (dynamic shapes: bags and sequences vary in length per batch).
    The returned module shares its parameters with `model`; save and checkpoint `model` itself."""
    if not enabled:
        return model
    log.info("compiling the model with torch.compile (the first steps take longer)")
    return torch.compile(model, dynamic=True)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's model inputs on `device`; copies overlap compute when the loader pinned them."""
    return {m: {k: v.to(device, non_blocking=True) for k, v in t.items()} for m, t in batch["inputs"].items()}
