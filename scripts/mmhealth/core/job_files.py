"""How a rule hands a job the files it declared: JSON maps of paths, made by the input function that
declares them (workflow/rules/inputs.smk), so a job never looks for files on its own."""

from __future__ import annotations

import json
from pathlib import Path

ShardMap = dict[str, dict[str, list[Path]]]  # split -> modality -> token shard files, in shard order


def shard_map(text: str) -> ShardMap:
    """`{"train": {"image": ["...shard-0.parquet", ...]}, ...}` as Paths."""
    return {split: {m: [Path(p) for p in paths] for m, paths in by_modality.items()}
            for split, by_modality in json.loads(text).items()}


def path_map(text: str) -> dict[str, Path]:
    """`{"image": "results/tokens/image/tokenizer", ...}` as Paths."""
    return {key: Path(value) for key, value in json.loads(text).items()}
