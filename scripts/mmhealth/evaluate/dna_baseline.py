"""DNA baseline features: k-mer counts (several k) of the sequence windows in each unit's bag.

Token rows hold k-mer ids (`tokenize/dna.py`, k and stride in the tokenizer's `kmer_config.json`): id = 5 + the
k-mer in base 4. The bases are read back from them (a base of an [UNK] k-mer, i.e. near an N, stays unknown),
then the j-mers of each window (j = 3..6, none across a window edge or an unknown base) are counted and summed
over the bag. TF-IDF or L2 normalisation is fitted inside each CV fold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.preprocessing import Normalizer

from mmhealth.core.parquet_io import read_tables
from mmhealth.core.special_tokens import UNK_ID
from mmhealth.evaluate.baseline_bags import (
    Unit,
    list_parts,
    row_unit_pairs,
    rows_per_unit,
    train_columns,
    unit_sum,
)
from mmhealth.evaluate.baseline_select import Variant
from mmhealth.tokenize.dna_kmers import KMER_CONFIG_FILE, N_SPECIAL

KS = (3, 4, 5, 6)
WEIGHTINGS = {"tfidf": ("TF-IDF", lambda: TfidfTransformer()), "l2": ("L2-normalised", lambda: Normalizer())}


def row_bases(ids: np.ndarray, offsets: np.ndarray, k: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Bases (0..3 for ACGT, -1 unknown) of each row's k-mer ids and their row offsets.

    Every k-mer gives its first `stride` bases, and a row's last k-mer also the rest: overlapping (stride 1)
    and non-overlapping (stride k) k-mers both give back the window. Special tokens other than [UNK] are dropped.
    """
    ids = np.asarray(ids, dtype=np.int64)
    row_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    keep = (ids >= N_SPECIAL) | (ids == UNK_ID)
    ids, row_of = ids[keep], row_of[keep]
    n_tokens = np.bincount(row_of, minlength=len(offsets) - 1)
    value = np.where(ids >= N_SPECIAL, ids - N_SPECIAL, -1)
    powers = 4 ** np.arange(k - 1, -1, -1)
    digits = np.where(value[:, None] >= 0, (np.maximum(value, 0)[:, None] // powers) % 4, -1)  # (tokens, k)
    is_last = np.r_[row_of[1:] != row_of[:-1], True] if len(ids) else np.zeros(0, bool)
    take = np.where(is_last, k, stride)  # bases each k-mer contributes
    column = np.arange(k)[None, :] < take[:, None]
    bases = digits[column].astype(np.int8)
    per_row = np.bincount(row_of, weights=take, minlength=len(n_tokens)).astype(np.int64)
    return bases, np.concatenate([[0], np.cumsum(per_row)])


def kmer_counts(bases: np.ndarray, offsets: np.ndarray, k: int) -> sp.csr_matrix:
    """(rows, 4^k) counts of the k-mers inside each row (none spanning an unknown base or a row edge)."""
    n_rows = len(offsets) - 1
    n = max(len(bases) - k + 1, 0)
    values = np.zeros(n, np.int64)
    for j in range(k):
        values = values * 4 + np.maximum(bases[j:j + n], 0)
    unknown = np.concatenate([[0], np.cumsum(bases < 0)])
    row_of = np.repeat(np.arange(n_rows), np.diff(offsets))[:n]
    valid = (unknown[k:k + n] == unknown[:n]) & (np.arange(n) + k <= offsets[1:][row_of])
    return sp.csr_matrix((np.ones(int(valid.sum())), (row_of[valid], values[valid])), shape=(n_rows, 4**k))


def bag_kmer_counts(paths: Sequence[Path], units: Sequence[Unit], k: int, stride: int,
                    ks: Sequence[int]) -> tuple[dict[int, sp.csr_matrix], np.ndarray]:
    """Per j in `ks`: per unit summed j-mer counts over the shards; and each unit's number of rows."""
    counts: dict[int, sp.csr_matrix] = {}
    n_rows = np.zeros(len(units), np.int64)
    for path in paths:
        table = read_tables([path], ["subject_id", "record_id", "input_ids"])
        rows, owner = row_unit_pairs(table, units, "dna")
        bases, offsets = row_bases(*list_parts(table.column("input_ids")), k, stride)
        for j in ks:
            part = unit_sum(kmer_counts(bases, offsets, j), rows, owner, len(units))
            counts[j] = part if j not in counts else counts[j] + part
        n_rows += rows_per_unit(owner, len(units))
    return counts, n_rows


def dna_variants(paths: dict[str, Sequence[Path]], units: dict[str, Sequence[Unit]], tokenizer_dir: Path,
                 ks: Sequence[int] = KS) -> tuple[list[Variant], dict[str, np.ndarray]]:
    """One variant per k and weighting (TF-IDF, L2); and per split the units that have rows."""
    config = json.loads((Path(tokenizer_dir) / KMER_CONFIG_FILE).read_text())
    counts = {split: bag_kmer_counts(paths[split], units[split], config["k"], config["stride"], ks)
              for split in ("train", "test")}
    variants = [Variant("dna", f"kmer{j}_{weighting}", f"{label} {j}-mer counts",
                        {"features": f"{j}-mer counts", "k": j, "weighting": weighting},
                        *train_columns(counts["train"][0][j], counts["test"][0][j]), make, dense=False)
                for j in ks for weighting, (label, make) in WEIGHTINGS.items()]
    return variants, {split: counts[split][1] > 0 for split in counts}
