"""Clinical notes (EHR events with a text_value) to WordPiece token windows.

The tokenizer is a `tokenizers` WordPiece (BERT normaliser and pre-tokenizer) trained on train-split notes,
or a local pretrained tokenizer copied as is. A note longer than one model input becomes several
overlapping `[CLS] ... [SEP]` windows that share the note's record_id, so nothing is truncated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from mmhealth.core.special_tokens import SPECIAL_TOKENS
from mmhealth.tokenize.common import ids_table, save_fast_tokenizer

log = logging.getLogger("tokenize_text")


@dataclass(frozen=True)
class TextParams:
    """Config `tokenize.text` (defaults and bounds: the config schema)."""

    SECTION: ClassVar[str] = "tokenize.text"
    vocab_size: int  # WordPiece vocabulary, specials included
    min_frequency: int  # a merge must occur this often in train notes
    max_length: int  # tokens per window, [CLS] and [SEP] included
    stride: int  # tokens shared by consecutive windows of one note
    lowercase: bool
    tokenizer_path: str | None  # local pretrained tokenizer folder used instead of fitting

    def __post_init__(self) -> None:
        if self.stride >= self.max_length - 2:  # the one cross-key bound the schema cannot express
            raise ValueError(f"config key 'tokenize.text.stride' must be below max_length - 2, got {self.stride}")


MODALITY = "text"
PARAMS = TextParams


def modality_rows(table: pa.Table) -> pa.Table:
    """The events that are notes: those with a text_value."""
    return table.filter(pc.is_valid(table.column("text_value")))


def wordpiece_vocab(notes: Sequence[str], normalizer, pre_tokenizer, params: TextParams) -> dict[str, int]:
    """Specials, every character (alone and as a ##continuation), then the most frequent words.

    Built here rather than with `trainers.WordPieceTrainer`, which returns a different vocabulary in every
    process from the same notes (huggingface/tokenizers#1794): a rerun must give identical token ids.
    Ties are broken by the token text, so the result depends only on the multiset of notes.
    """
    counts: Counter[str] = Counter()
    for note in notes:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(note)))
    alphabet = sorted({ch for word in counts for ch in word})
    vocab = list(SPECIAL_TOKENS) + alphabet + [f"##{ch}" for ch in alphabet]
    known = set(vocab)
    frequent = sorted((w for w, c in counts.items() if c >= params.min_frequency and w not in known),
                      key=lambda w: (-counts[w], w))
    vocab += frequent[: max(0, params.vocab_size - len(vocab))]
    return {token: i for i, token in enumerate(vocab)}


def train_wordpiece(notes: Sequence[str], params: TextParams) -> Tokenizer:
    """A WordPiece tokenizer fitted on `notes`, with specials [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4."""
    normalizer = normalizers.BertNormalizer(lowercase=params.lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocab(notes, normalizer, pre_tokenizer, params)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    # Same [CLS] text [SEP] layout as our windows, so transformers users get identical ids.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def copy_pretrained(tokenizer_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Copy a local pretrained (fast) tokenizer into `out_dir` through transformers; never touches the network."""
    from transformers import AutoTokenizer  # costs seconds: imported only on this path

    if not Path(tokenizer_path).is_dir():
        raise FileNotFoundError(f"tokenize.text.tokenizer_path {tokenizer_path}: not a local folder")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    if not tokenizer.is_fast or tokenizer.cls_token is None or tokenizer.sep_token is None:
        raise ValueError(f"{tokenizer_path}: need a fast tokenizer with cls and sep tokens")
    tokenizer.save_pretrained(str(out_dir))


def fit_tokenizer(train_rows: pa.Table, out_dir: str | os.PathLike, params: TextParams) -> None:
    """Write the text tokenizer folder: fitted on `train_rows` notes, or copied from params.tokenizer_path."""
    if params.tokenizer_path:
        log.info("using pretrained tokenizer %s instead of fitting", params.tokenizer_path)
        copy_pretrained(params.tokenizer_path, out_dir)
        return
    notes = train_rows.column("text_value").to_pylist()
    if not notes:
        log.warning("no train notes: the tokenizer holds only the special tokens")
    tokenizer = train_wordpiece(notes, params)
    log.info("trained WordPiece on %d notes: %d tokens", len(notes), tokenizer.get_vocab_size())
    save_fast_tokenizer(tokenizer, out_dir, model_max_length=params.max_length)


def load_text_tokenizer(tokenizer_dir: str | os.PathLike) -> tuple[Tokenizer, int, int]:
    """The folder's `tokenizers.Tokenizer` (no truncation, no padding) and its [CLS] and [SEP] ids."""
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokenizer.no_truncation()  # pretrained folders may carry truncation/padding; windows handle length here
    tokenizer.no_padding()
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    ids = [tokenizer.token_to_id(config.get(key) or default) for key, default in
           (("cls_token", "[CLS]"), ("sep_token", "[SEP]"))]
    if None in ids:
        raise ValueError(f"{tokenizer_dir}: tokenizer has no cls or sep token")
    return tokenizer, ids[0], ids[1]


def note_windows(ids: Sequence[int], max_length: int, stride: int, cls_id: int, sep_id: int) -> list[list[int]]:
    """`[CLS] body [SEP]` windows of at most max_length covering every id; consecutive bodies share `stride` ids."""
    body = max_length - 2
    step = body - stride
    starts = [0]
    while starts[-1] + body < len(ids):
        starts.append(starts[-1] + step)
    return [[cls_id, *ids[start:start + body], sep_id] for start in starts]


def note_record_ids(subject_ids: Sequence[int], times: Sequence[object]) -> list[str]:
    """sha256(f"{subject_id}:{time}:{row_index_within_subject}")[:24] per note; inputs are pseudonyms already."""
    seen: dict[int, int] = {}
    record_ids = []
    for subject_id, time in zip(subject_ids, times, strict=True):
        index = seen.get(subject_id, 0)
        seen[subject_id] = index + 1
        record_ids.append(hashlib.sha256(f"{subject_id}:{time}:{index}".encode()).hexdigest()[:24])
    return record_ids


def encode_rows(rows: pa.Table, tokenizer_dir: str | os.PathLike, params: TextParams) -> pa.Table:
    """One row per note window: subject_id, the note's record_id, input_ids. Notes keep part order."""
    tokenizer, cls_id, sep_id = load_text_tokenizer(tokenizer_dir)
    subject_ids = rows.column("subject_id").to_pylist()
    record_ids = note_record_ids(subject_ids, rows.column("time").to_pylist())
    # encode_batch_fast skips character offsets, which windows by token count never need.
    encodings = tokenizer.encode_batch_fast(rows.column("text_value").to_pylist(), add_special_tokens=False)
    out_subjects, out_records, out_ids = [], [], []
    split_notes = 0
    for subject_id, record_id, encoding in zip(subject_ids, record_ids, encodings, strict=True):
        windows = note_windows(encoding.ids, params.max_length, params.stride, cls_id, sep_id)
        split_notes += len(windows) > 1
        out_subjects += [subject_id] * len(windows)
        out_records += [record_id] * len(windows)
        out_ids += windows
    log.info("encoded %d notes into %d windows (%d notes longer than one window)",
             len(record_ids), len(out_ids), split_notes)
    return ids_table(out_subjects, out_records, out_ids)
