"""Structured EHR events (MEDS, no text_value) to one time-ordered code sequence per subject.

Each event becomes its code token and, when it has a numeric value, a quantile bin token `Q0`..`Q{n-1}`
from that code's train-split value distribution; a censored value (`numeric_value_censored` `<` or `>`: the
value is a bound, as in `<5`) adds the token `<` or `>` after its bin, so `LAB//CRP Q0 <` reads "CRP below
the bound in the lowest bin". Codes seen fewer than `min_count` times in train become
[UNK]. The vocabulary is a `tokenizers` WordLevel model fed pre-tokenized lists, because codes may hold
spaces and '//'. When a subject's sequence is too long, the most recent events are kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer, models, processors
from tqdm import tqdm

from mmhealth.core.special_tokens import CLS_ID, SPECIAL_TOKENS
from mmhealth.tokenize.common import ids_table, save_fast_tokenizer

log = logging.getLogger("tokenize_ehr")

BIN_EDGES_FILE = "numeric_bins.json"  # the name models.TOKENIZER_FILES copies into model folders
NO_VALUE, NO_EDGES = -1, -2  # bin codes of an event without a value / of a code without fitted edges
CENSORED_COLUMN = "numeric_value_censored"  # MEDS extension column written by the EHR ingest
CENSORED_TOKENS = ("<", ">")  # after the bin token of a value that is only a bound


@dataclass(frozen=True)
class EhrParams:
    """Config `tokenize.ehr` (defaults and bounds: the config schema)."""

    SECTION: ClassVar[str] = "tokenize.ehr"
    min_count: int  # codes seen fewer times in train become [UNK]
    max_length: int  # tokens per subject, [CLS] included; older events dropped first
    numeric_bins: int  # quantile bins per code for numeric values


MODALITY = "ehr"
PARAMS = EhrParams


def modality_rows(table: pa.Table) -> pa.Table:
    """The structured events: those without a text_value (notes go to the text modality)."""
    return table.filter(pc.is_null(table.column("text_value")))


def bin_tokens(numeric_bins: int) -> list[str]:
    """Bin token strings Q0..Q{numeric_bins-1}."""
    return [f"Q{i}" for i in range(numeric_bins)]


def _breaks_on_specials(code: str) -> bool:
    # tokenizers cuts added special tokens out of any word, so such a code could not be one token.
    return any(special in code for special in SPECIAL_TOKENS)


def safe_codes(codes: Sequence[str]) -> list[str]:
    """Codes as words for the WordLevel model; a code containing a special token string becomes [UNK]."""
    return ["[UNK]" if code is None or _breaks_on_specials(code) else code for code in codes]


def _grouped(codes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique codes, row order grouping equal codes, group boundaries in that order)."""
    unique, inverse = np.unique(np.asarray(codes, dtype=object).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
    return unique, order, bounds


def _values(rows: pa.Table) -> np.ndarray:
    """numeric_value as float64 with NaN where unset."""
    return rows.column("numeric_value").cast(pa.float64()).to_numpy(zero_copy_only=False).astype(float)


def fit_bin_edges(codes: Sequence[str], values: np.ndarray, numeric_bins: int, keep: set[str]) -> dict[str, list[float]]:
    """Per code in `keep`: the numeric_bins-1 inner quantile edges of its non-NaN train values."""
    quantiles = np.linspace(0.0, 1.0, numeric_bins + 1)[1:-1]
    edges: dict[str, list[float]] = {}
    if not len(codes):
        return edges
    unique, order, bounds = _grouped(codes)
    for index, code in enumerate(unique):
        group = values[order[bounds[index]:bounds[index + 1]]]
        group = group[~np.isnan(group)]
        if code in keep and group.size:
            edges[str(code)] = np.quantile(group, quantiles).tolist()
    return edges


def assign_bins(codes: Sequence[str], values: np.ndarray, edges: dict[str, list[float]]) -> np.ndarray:
    """Bin index per event: 0..n-1, NO_VALUE without a value, NO_EDGES for a value of a code without edges."""
    bins = np.where(np.isnan(values), NO_VALUE, NO_EDGES).astype(np.int64)
    if not len(codes):
        return bins
    unique, order, bounds = _grouped(codes)
    for index, code in enumerate(unique):
        rows = order[bounds[index]:bounds[index + 1]]
        rows = rows[~np.isnan(values[rows])]
        if rows.size and str(code) in edges:
            bins[rows] = np.searchsorted(np.asarray(edges[str(code)]), values[rows], side="right")
    return bins


def build_vocab(codes: Sequence[str], params: EhrParams) -> dict[str, int]:
    """Specials, bin tokens, then train codes seen at least min_count times (sorted, for stable ids)."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *bin_tokens(params.numeric_bins),
                                                 *CENSORED_TOKENS])}
    counts = pc.value_counts(pa.array(safe_codes(codes), type=pa.string())).to_pylist()
    frequent = sorted(item["values"] for item in counts if item["counts"] >= params.min_count)
    clashes = [code for code in frequent if code in vocab and code != "[UNK]"]
    if clashes:
        log.warning("%d code(s) equal a special or bin token and share its id: %s", len(clashes), clashes[:5])
    for code in frequent:
        vocab.setdefault(code, len(vocab))
    return vocab


def fit_tokenizer(train_rows: pa.Table, out_dir: str | os.PathLike, params: EhrParams) -> None:
    """Write the EHR tokenizer folder (WordLevel over codes and bin tokens) and its per-code bin edges."""
    codes = train_rows.column("code").to_pylist()
    vocab = build_vocab(codes, params)
    n_specials = len(SPECIAL_TOKENS) + params.numeric_bins + len(CENSORED_TOKENS)
    edges = fit_bin_edges(safe_codes(codes), _values(train_rows), params.numeric_bins, set(list(vocab)[n_specials:]))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    # No normaliser or pre-tokenizer: one list element is one code. Sequences start with [CLS], no [SEP].
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", CLS_ID)])
    save_fast_tokenizer(tokenizer, out_dir, model_max_length=params.max_length)
    (Path(out_dir) / BIN_EDGES_FILE).write_text(json.dumps(
        {"numeric_bins": params.numeric_bins, "edges": edges}, indent=1, sort_keys=True) + "\n")
    log.info("EHR vocabulary: %d codes kept of %d distinct (min_count %d); bin edges for %d codes",
             len(vocab) - n_specials, len(set(codes)), params.min_count, len(edges))


def load_ehr_tokenizer(tokenizer_dir: str | os.PathLike, params: EhrParams) -> tuple[Tokenizer, dict[str, list[float]]]:
    """The folder's WordLevel tokenizer and bin edges; the edges must have been fitted with params.numeric_bins."""
    tokenizer_dir = Path(tokenizer_dir)
    saved = json.loads((tokenizer_dir / BIN_EDGES_FILE).read_text())
    if saved["numeric_bins"] != params.numeric_bins:
        raise ValueError(f"{tokenizer_dir}: fitted with numeric_bins={saved['numeric_bins']}, "
                         f"asked for {params.numeric_bins}; refit the tokenizer")
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer, saved["edges"]


def time_ordered(rows: pa.Table) -> pa.Table:
    """Rows sorted by subject, then time (static events, time null, first), then original order."""
    indexed = rows.append_column("__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    order = pc.sort_indices(indexed, sort_keys=[("subject_id", "ascending"), ("time", "ascending", "at_start"),
                                                ("__row", "ascending")])
    return rows.take(order)


def recent_events(event_lengths: Sequence[int], budget: int) -> int:
    """Index of the first event to keep so the kept (most recent) events fit in `budget` tokens."""
    used, start = 0, len(event_lengths)
    while start > 0 and used + event_lengths[start - 1] <= budget:
        start -= 1
        used += event_lengths[start]
    return start


def censored_sides(rows: pa.Table) -> list[str | None]:
    """`<`, `>` or None per event (None for all when the column is absent: parts written before it existed)."""
    if CENSORED_COLUMN not in rows.column_names:
        return [None] * rows.num_rows
    return rows.column(CENSORED_COLUMN).to_pylist()


def subject_words(codes: Sequence[str], bins: np.ndarray, numeric_bins: int, budget: int,
                  sides: Sequence[str | None] | None = None) -> tuple[list[str], bool]:
    """One subject's words (code, then its bin token if valued, then `<`/`>` if the value is a bound), oldest
    events dropped to fit; and whether any were."""
    bin_names = bin_tokens(numeric_bins)
    events = [[code] if b == NO_VALUE else [code, "[UNK]" if b == NO_EDGES else bin_names[b]]
              for code, b in zip(codes, bins.tolist(), strict=True)]
    for event, side in zip(events, sides or [], strict=False):
        if side in CENSORED_TOKENS and len(event) == 2:
            event.append(side)
    start = recent_events([len(event) for event in events], budget)
    return [word for event in events[start:] for word in event], start > 0


def encode_rows(rows: pa.Table, tokenizer_dir: str | os.PathLike, params: EhrParams) -> pa.Table:
    """One row per subject: record_id str(subject_id), input_ids [CLS] then its events' tokens, oldest dropped first."""
    tokenizer, edges = load_ehr_tokenizer(tokenizer_dir, params)
    rows = time_ordered(rows)
    codes = safe_codes(rows.column("code").to_pylist())
    bins = assign_bins(codes, _values(rows), edges)
    sides = censored_sides(rows)
    subject_ids = rows.column("subject_id").to_numpy()
    bounds = np.flatnonzero(np.diff(subject_ids)) + 1
    starts = np.concatenate([[0], bounds]).astype(int) if len(subject_ids) else np.zeros(0, int)
    ends = np.concatenate([bounds, [len(subject_ids)]]).astype(int) if len(subject_ids) else np.zeros(0, int)
    sequences, truncated = [], 0
    for start, end in tqdm(zip(starts, ends, strict=True), total=len(starts), desc="ehr subjects",
                           mininterval=10, leave=False):
        words, cut = subject_words(codes[start:end], bins[start:end], params.numeric_bins, params.max_length - 1,
                                   sides[start:end])
        sequences.append(words)
        truncated += cut
    encodings = tokenizer.encode_batch(sequences, is_pretokenized=True, add_special_tokens=False)
    input_ids = [[CLS_ID, *encoding.ids] for encoding in encodings]
    log.info("encoded %d events of %d subjects; %d subject(s) truncated to the most recent %d tokens",
             rows.num_rows, len(starts), truncated, params.max_length)
    subjects = subject_ids[starts].tolist()
    return ids_table(subjects, [str(s) for s in subjects], input_ids)
