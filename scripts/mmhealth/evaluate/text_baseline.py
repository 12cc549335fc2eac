"""Text baseline features: word (and optionally character) n-gram counts of the notes in each unit's bag.

Token rows are WordPiece ids; they are decoded back to text with the task's own tokenizer (`tokenizer.json`),
so word n-grams are those of the notes (lower-cased as the tokenizer normalises them). Counts are hashed
(no vocabulary to fit, so a CV fold never sees another fold's words) into 2^20 columns and summed over a
bag's rows; TF-IDF weighting with sublinear tf is fitted inside each fold.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from tokenizers import Tokenizer

from mmhealth.core.parquet_io import read_tables
from mmhealth.core.special_tokens import SPECIAL_TOKENS
from mmhealth.evaluate.baseline_bags import (
    Unit,
    list_parts,
    row_unit_pairs,
    rows_per_unit,
    train_columns,
    unit_sum,
)
from mmhealth.evaluate.baseline_select import Variant

N_FEATURES = 2**20
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
TOKEN_PATTERN = r"(?u)\b\w+\b"  # single characters and digits are words too in clinical notes


def word_counts(texts: Sequence[str]) -> sp.csr_matrix:
    """Hashed word 1-2-gram counts, one row per text."""
    return HashingVectorizer(ngram_range=WORD_NGRAMS, token_pattern=TOKEN_PATTERN, n_features=N_FEATURES,
                             alternate_sign=False, norm=None).transform(texts).tocsr()


def char_counts(texts: Sequence[str]) -> sp.csr_matrix:
    """Hashed character 2-5-gram counts (within word boundaries), one row per text."""
    return HashingVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, n_features=N_FEATURES,
                             alternate_sign=False, norm=None).transform(texts).tocsr()


def special_ids(tokenizer: Tokenizer) -> np.ndarray:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK] and of every added special token (pretrained tokenizers' own)."""
    ids = {tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    ids |= {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    return np.array(sorted(i for i in ids if i is not None), dtype=np.int64)


def decode_rows(ids: np.ndarray, offsets: np.ndarray, tokenizer: Tokenizer) -> list[str]:
    """Each row's ids decoded to text, special tokens dropped (WordPiece '##' pieces joined to words)."""
    keep = ~np.isin(ids, special_ids(tokenizer))
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[keep]
    kept = np.asarray(ids)[keep]
    bounds = np.searchsorted(rows, np.arange(len(offsets)))
    return tokenizer.decode_batch([kept[a:b].tolist() for a, b in itertools.pairwise(bounds)])


def bag_texts_counts(paths: Sequence[Path], units: Sequence[Unit], tokenizer: Tokenizer,
                     char_ngrams: bool) -> tuple[sp.csr_matrix, sp.csr_matrix | None, np.ndarray]:
    """Per unit: summed word counts, summed char counts (if asked) and number of rows, over the shards."""
    words, chars, n_rows = None, None, np.zeros(len(units), np.int64)
    for path in paths:
        table = read_tables([path], ["subject_id", "record_id", "input_ids"])
        rows, owner = row_unit_pairs(table, units, "text")
        ids, offsets = list_parts(table.column("input_ids"))
        texts = decode_rows(ids, offsets, tokenizer)
        part = unit_sum(word_counts(texts), rows, owner, len(units))
        words = part if words is None else words + part
        if char_ngrams:
            part = unit_sum(char_counts(texts), rows, owner, len(units))
            chars = part if chars is None else chars + part
        n_rows += rows_per_unit(owner, len(units))
    return words, chars, n_rows


def text_variants(paths: dict[str, Sequence[Path]], units: dict[str, Sequence[Unit]], tokenizer_dir: Path,
                  char_ngrams: bool = False) -> tuple[list[Variant], dict[str, np.ndarray]]:
    """Word 1-2-grams (and, with `char_ngrams`, word 1-2-grams with char 2-5-grams as a second variant, which
    about doubles the cost); and per split the units that have rows."""
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    counts = {split: bag_texts_counts(paths[split], units[split], tokenizer, char_ngrams) for split in ("train", "test")}
    has_rows = {split: counts[split][2] > 0 for split in counts}

    def tfidf():
        return TfidfTransformer(sublinear_tf=True)

    variants = [Variant("text", "tfidf_word_1_2grams", "TF-IDF word 1-2-grams (sublinear tf)",
                        {"features": "word 1-2-grams", "weighting": "tfidf sublinear tf", "hashed_features": N_FEATURES},
                        *train_columns(counts["train"][0], counts["test"][0]), tfidf, dense=False)]
    if char_ngrams:
        variants.append(Variant(
            "text", "tfidf_word_1_2grams_char_2_5grams", "TF-IDF word 1-2-grams and character 2-5-grams (sublinear tf)",
            {"features": "word 1-2-grams + char 2-5-grams", "weighting": "tfidf sublinear tf",
             "hashed_features": 2 * N_FEATURES},
            *train_columns(sp.hstack([counts["train"][0], counts["train"][1]], format="csr"),
                           sp.hstack([counts["test"][0], counts["test"][1]], format="csr")), tfidf, dense=False))
    return variants, has_rows
