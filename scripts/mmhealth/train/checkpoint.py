"""Resumable training state: one safetensors file per task, written atomically, refused on other settings.

A checkpoint holds the model, the optimizer and scheduler, the torch/python/numpy RNG states, the early
stopping state (best weights included) and the training history. Tensors go into the safetensors body, the
rest into its JSON metadata: no pickle is ever read. The file is written next to its final name and
renamed over it, so a kill at any instant leaves either the previous checkpoint or the new one.

Sampling and shuffling draw from numpy generators seeded from (seed, epoch[, rank, batch]), so the numpy
side of a resumed run is fixed by its position alone; the global numpy and python states are saved anyway
for code that uses them (augmentations, libraries).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHECKPOINT_FILE = "last.safetensors"


def fingerprint(settings: dict, files: list[Path]) -> str:
    """sha256 of the settings and of each input file's path, size and modification time (hashing the
    content of many GB of shards at every start would cost minutes; a rewritten shard changes its mtime)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in sorted(map(str, files)):
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _flat(prefix: str, state: dict, tensors: dict) -> dict:
    """Tensors of a nested state dict moved into `tensors` under `prefix/...`; the rest returned as JSON."""
    plain = {}
    for key, value in state.items():
        name = f"{prefix}/{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous().clone()
            plain[str(key)] = {"__tensor__": name}
        elif isinstance(value, dict):
            plain[str(key)] = {"__dict__": _flat(name, value, tensors), "__int_keys__":
                               all(isinstance(k, int) for k in value)}
        else:
            plain[str(key)] = value
    return plain


def _unflat(plain: dict, tensors) -> dict:
    state = {}
    for key, value in plain.items():
        if isinstance(value, dict) and "__tensor__" in value:
            state[key] = tensors.get_tensor(value["__tensor__"])
        elif isinstance(value, dict) and "__dict__" in value:
            inner = _unflat(value["__dict__"], tensors)
            state[key] = {int(k): v for k, v in inner.items()} if value["__int_keys__"] else inner
        else:
            state[key] = value
    return state


def rng_states() -> dict:
    py = random.getstate()
    legacy = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [legacy[0], legacy[1].tolist(), *legacy[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    legacy = states["numpy"]
    np.random.set_state((legacy[0], np.asarray(legacy[1], dtype=np.uint32), *legacy[2:]))
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def save(folder: Path, state: dict) -> Path:
    """Write `state` (nested dicts of tensors and JSON values; lists of tensors are not supported except
    the CUDA RNG states) atomically as folder/last.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    state = dict(state)
    state["rng"] = dict(state["rng"])
    cuda = state["rng"].pop("cuda")
    for i, t in enumerate(cuda):
        tensors[f"rng/cuda/{i}"] = t.contiguous().clone()
    plain = _flat("s", state, tensors)
    plain["__cuda_rng__"] = len(cuda)
    target = folder / CHECKPOINT_FILE
    temporary = folder / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    save_file(tensors, str(temporary), metadata={"state": json.dumps(plain)})
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target


def load(folder: Path) -> dict | None:
    """The state saved in folder/last.safetensors, or None when there is none."""
    path = folder / CHECKPOINT_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as tensors:
        plain = json.loads(tensors.metadata()["state"])
        n_cuda = plain.pop("__cuda_rng__")
        state = _unflat(plain, tensors)
        state["rng"]["cuda"] = [tensors.get_tensor(f"rng/cuda/{i}") for i in range(n_cuda)]
    return state


def remove(folder: Path) -> None:
    """Delete the checkpoint (a finished run's model folder supersedes it) and the folder if left empty."""
    for path in (folder / CHECKPOINT_FILE, *folder.glob(f".{CHECKPOINT_FILE}.*.tmp")):
        path.unlink(missing_ok=True)
    if folder.exists() and not any(folder.iterdir()):
        folder.rmdir()
