"""Where tensors run: the device, bf16 autocast on GPUs, and moving a collated batch there."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on GPUs; plain fp32 on CPU, where bf16 is slower on most hosts."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(batch: dict, device: torch.device) -> dict:
    return {m: {k: v.to(device, non_blocking=True) for k, v in t.items()} for m, t in batch["inputs"].items()}
