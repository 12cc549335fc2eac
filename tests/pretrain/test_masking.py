"""What pretraining hides: BERT's 15% / 80-10-10, specials never, whole spans of overlapping DNA k-mers."""

from __future__ import annotations

import numpy as np
import torch

from mmhealth.core.special_tokens import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS
from mmhealth.pretrain.masking import IGNORE, mask_patches, mask_tokens

SPECIALS = list(range(len(SPECIAL_TOKENS)))


def rows(n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """[CLS] tokens [SEP] then padding, rows of varied length."""
    rng = np.random.default_rng(seed)
    ids = np.full((n, length), PAD_ID, dtype=np.int64)
    for i in range(n):
        used = int(rng.integers(length // 2, length - 1))
        ids[i, 0], ids[i, 1:used + 1], ids[i, used + 1] = CLS_ID, rng.integers(5, vocab, used), SEP_ID
    return torch.as_tensor(ids)


def test_fifteen_percent_of_ordinary_tokens_then_80_10_10_and_never_a_special():
    ids = rows(400, 64, 1000)
    masked, labels = mask_tokens(ids, SPECIALS, MASK_ID, 1000, 0.15, torch.Generator().manual_seed(0))
    selected = labels != IGNORE
    ordinary = ids >= len(SPECIAL_TOKENS)
    assert not (selected & ~ordinary).any()  # [PAD], [CLS], [SEP] are never selected
    assert torch.equal(labels[selected], ids[selected])
    assert abs(selected.sum() / ordinary.sum() - 0.15) < 0.01
    as_mask = (masked[selected] == MASK_ID).float().mean()
    kept = (masked[selected] == ids[selected]).float().mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # the rest: random ordinary tokens
    assert (masked[selected & (masked != MASK_ID)] >= len(SPECIAL_TOKENS)).all()
    assert torch.equal(masked[~selected], ids[~selected])  # nothing else changes


def test_the_same_generator_seed_masks_the_same_way():
    ids = rows(8, 32, 100)
    first = mask_tokens(ids, SPECIALS, MASK_ID, 100, 0.15, torch.Generator().manual_seed(3), span=6)
    again = mask_tokens(ids, SPECIALS, MASK_ID, 100, 0.15, torch.Generator().manual_seed(3), span=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def kmer_rows(n: int, bases: int, k: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Overlapping (stride 1) k-mer ids of random sequences as the dna tokenizer writes them, and the sequences."""
    rng = np.random.default_rng(seed)
    vocab = {}
    sequences, ids = [], []
    for _ in range(n):
        seq = "".join(rng.choice(list("ACGT"), bases))
        kmers = [seq[j:j + k] for j in range(bases - k + 1)]
        sequences.append(seq)
        ids.append([CLS_ID, *(vocab.setdefault(m, len(SPECIAL_TOKENS) + len(vocab)) for m in kmers), SEP_ID])
    return torch.as_tensor(ids), sequences


def recoverable(labels: torch.Tensor, masked: torch.Tensor, k: int) -> int:
    """Masked k-mers whose every base lies in some k-mer the model still sees (unmasked, not special)."""
    count = 0
    for row_labels, row in zip(labels, masked, strict=True):
        selected = (row_labels != IGNORE).tolist()
        n_kmers = len(row) - 2
        seen = [not selected[1 + j] for j in range(n_kmers)]  # k-mer j sits at position 1 + j
        covered = np.zeros(n_kmers + k - 1, dtype=bool)  # bases of the sequence covered by a seen k-mer
        for j in range(n_kmers):
            if seen[j]:
                covered[j:j + k] = True
        count += sum(covered[j:j + k].all() for j in range(n_kmers) if not seen[j])
    return int(count)


def test_whole_kmer_spans_leave_no_masked_kmer_recoverable_from_its_neighbours():
    k = 6
    ids, _ = kmer_rows(200, 120, k)
    vocab = int(ids.max()) + 1
    masked, labels = mask_tokens(ids, SPECIALS, MASK_ID, vocab, 0.15, torch.Generator().manual_seed(1), span=k)
    selected = labels != IGNORE
    assert abs(selected.sum() / (ids >= len(SPECIAL_TOKENS)).sum() - 0.15) < 0.04
    assert recoverable(labels, masked, k) == 0
    # every masked run is at least k long, and its 80/10/10 choice covers the whole run
    for row_sel, row_in, row_ids in zip(selected.tolist(), masked, ids, strict=True):
        runs, start = [], None
        for i, s in enumerate([*row_sel, False]):
            if s and start is None:
                start = i
            elif not s and start is not None:
                runs.append((start, i))
                start = None
        assert all(b - a >= k for a, b in runs)
        for a, b in runs:
            kinds = {"mask" if t == MASK_ID else "kept" if t == o else "random"
                     for t, o in zip(row_in[a:b].tolist(), row_ids[a:b].tolist(), strict=True)}
            assert len(kinds) == 1 or kinds <= {"random", "kept"}
    # the test has teeth: BERT's independent tokens on the same rows leak most masked k-mers
    masked1, labels1 = mask_tokens(ids, SPECIALS, MASK_ID, vocab, 0.15, torch.Generator().manual_seed(1))
    assert recoverable(labels1, masked1, k) > 0.5 * int((labels1 != IGNORE).sum())


def test_patch_masks_hide_the_asked_fraction_of_each_image():
    masks = mask_patches(5, 64, 0.6, torch.Generator().manual_seed(0))
    assert masks.shape == (5, 64) and (masks.sum(dim=1) == round(0.6 * 64)).all()
    assert not torch.equal(masks[0], masks[1])
