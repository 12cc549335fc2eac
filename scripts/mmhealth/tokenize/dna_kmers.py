"""k-mer id arithmetic shared by DNA tokenisation and training-time augmentation.

K-mer ids follow the special tokens: id = N_SPECIAL + the k-mer read as a base-4 number (A=0 C=1 G=2 T=3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmhealth.core.special_tokens import SPECIAL_TOKENS, UNK_ID

KMER_CONFIG_FILE = "kmer_config.json"
N_SPECIAL = len(SPECIAL_TOKENS)


def reverse_complement_ids(ids: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """Ids of the reverse complement: k-mers reversed in order and each reverse-complemented.

    Leading and trailing special tokens ([CLS], [SEP], [PAD]) stay where they are; [UNK] k-mers stay [UNK].
    """
    ids = np.asarray(ids, dtype=np.int64)
    is_edge_special = (ids < N_SPECIAL) & (ids != UNK_ID)
    lead = int(np.argmin(is_edge_special)) if not is_edge_special.all() else len(ids)
    trail = int(np.argmin(is_edge_special[::-1])) if lead < len(ids) else 0
    body = ids[lead:len(ids) - trail][::-1].copy()
    kmer = body >= N_SPECIAL
    value = body[kmer] - N_SPECIAL
    complement = (4**k - 1) - value  # complementing every base: c -> 3 - c in each base-4 digit
    reversed_value = np.zeros_like(complement)
    for _ in range(k):
        reversed_value = reversed_value * 4 + complement % 4
        complement //= 4
    body[kmer] = reversed_value + N_SPECIAL
    return np.concatenate([ids[:lead], body, ids[len(ids) - trail:]]).astype(np.int32)
