"""DNA-only training augmentation: reverse complements of k-mer rows (config `finetune.reverse_complement`).

Named after its modality so that only DNA tasks list it among their code inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mmhealth.tokenize.dna_kmers import KMER_CONFIG_FILE, reverse_complement_ids


def tokenizer_k(tokenizer_dir: Path) -> int:
    """The k of the k-mer tokenizer in `tokenizer_dir`."""
    return int(json.loads((Path(tokenizer_dir) / KMER_CONFIG_FILE).read_text())["k"])


def reverse_complement_half(batch: dict, k: int, rng: np.random.Generator) -> None:
    """Each DNA row of the batch becomes its reverse complement with probability 1/2 (a read and its
    reverse complement carry the same biology)."""
    rows = batch["inputs"].get("dna")
    if rows is None:
        return
    ids, mask = rows["input_ids"], rows["attention_mask"].bool()
    for i in np.flatnonzero(rng.random(len(ids)) < 0.5):
        ids[i, mask[i]] = torch.as_tensor(reverse_complement_ids(ids[i, mask[i]].numpy(), k), dtype=ids.dtype)


def reverse_complement_augmentation(tokenizer_dir: Path) -> Callable[[dict, np.random.Generator], None]:
    """The batch augmentation for the training loop, with k read from the DNA tokenizer."""
    k = tokenizer_k(tokenizer_dir)
    return lambda batch, rng: reverse_complement_half(batch, k, rng)
