"""What self-supervision hides: BERT's 15% / 80-10-10 token masking, whole k-mer spans for overlapping DNA
k-mers, and random patches for masked-image modelling.

Every draw comes from a torch generator the caller seeds from (seed, epoch, batch), so a resumed run masks
each batch exactly as the uninterrupted run did.
"""

from __future__ import annotations

import torch

IGNORE = -100  # label of a position the loss skips (transformers' convention)


def span_starts(maskable: torch.Tensor, span: int) -> torch.Tensor:
    """Positions where a span of `span` maskable tokens begins (the span stays inside maskable tokens)."""
    if span == 1:
        return maskable.clone()
    windows = maskable.long().unfold(1, span, 1).sum(-1) == span  # (rows, length - span + 1)
    starts = torch.zeros_like(maskable)
    starts[:, : windows.shape[1]] = windows
    return starts


def select_positions(maskable: torch.Tensor, mask_prob: float, span: int, generator: torch.Generator
                     ) -> torch.Tensor:
    """Which positions the model must predict: about `mask_prob` of the maskable ones, in runs of at least
    `span` consecutive tokens (span 1: independent tokens, as BERT).

    With overlapping k-mers (stride 1) a k-mer's k bases are spread over its k - 1 neighbours on each side;
    a run of k masked k-mers leaves at least one base of every masked k-mer in no unmasked k-mer, so the
    masked token cannot be read off its neighbours (DNABERT's whole-span masking).
    """
    starts = span_starts(maskable, span)
    # Starts drawn at mask_prob / span: spans of `span` tokens then cover about mask_prob of the tokens.
    chosen = (torch.rand(maskable.shape, generator=generator) < mask_prob / span) & starts
    # Every row with a place for a span gets at least one, so no row contributes nothing to the loss.
    empty = ~chosen.any(dim=1) & starts.any(dim=1)
    if empty.any():
        scores = torch.rand(maskable.shape, generator=generator).masked_fill(~starts, -1.0)
        chosen[empty, scores[empty].argmax(dim=1)] = True
    selected = chosen.clone()
    for offset in range(1, span):
        selected[:, offset:] |= chosen[:, :-offset]
    return selected & maskable


def mask_tokens(input_ids: torch.Tensor, special_ids: list[int], mask_id: int, vocab_size: int,
                mask_prob: float, generator: torch.Generator, span: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, labels): selected positions keep their id as label (others IGNORE) and become
    [MASK] 80% of the time, a random non-special token 10%, themselves 10%. Special and padding tokens are
    never selected. With span > 1 the 80/10/10 choice is drawn once per masked run, so a run is hidden whole
    or not at all."""
    special = torch.isin(input_ids, torch.as_tensor(special_ids, dtype=input_ids.dtype))
    selected = select_positions(~special, mask_prob, span, generator)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    draw = torch.rand(input_ids.shape, generator=generator)
    if span > 1:  # one draw per run: the draw of the run's first position
        run_start = selected & ~torch.nn.functional.pad(selected[:, :-1], (1, 0))
        run_id = torch.cumsum(run_start.long(), dim=1)
        first = torch.where(run_start, draw, torch.zeros_like(draw))
        per_run = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1).scatter_add_(1, run_id * run_start, first)
        draw = per_run.gather(1, run_id)
    masked = input_ids.clone()
    masked[selected & (draw < 0.8)] = mask_id
    randomised = selected & (draw >= 0.8) & (draw < 0.9)
    ordinary = torch.as_tensor(sorted(set(range(vocab_size)) - set(special_ids)), dtype=input_ids.dtype)
    picks = torch.randint(len(ordinary), (int(randomised.sum()),), generator=generator)
    masked[randomised] = ordinary[picks]
    return masked, labels


def mask_patches(n_images: int, n_patches: int, mask_prob: float, generator: torch.Generator) -> torch.Tensor:
    """bool (images, patches): round(mask_prob x patches) random patches per image, at least one."""
    count = max(1, round(mask_prob * n_patches))
    order = torch.rand(n_images, n_patches, generator=generator).argsort(dim=1)
    return order < count
