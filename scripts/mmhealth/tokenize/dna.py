"""DNA sequence windows to k-mer token ids, computed with numpy (no per-base Python).

Vocabulary: the five specials, then all 4^k k-mers over ACGT in lexicographic order, so a k-mer's id is
5 + its base-4 value; a k-mer containing any other letter (N, IUPAC codes) is [UNK]. The saved tokenizer is
a WordLevel over k-mers with a whitespace pre-tokenizer: space-separated k-mers encode to the same ids.
"""

from __future__ import annotations

import itertools
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
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from mmhealth.core.special_tokens import CLS_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID
from mmhealth.tokenize.common import ids_table, save_fast_tokenizer
from mmhealth.tokenize.dna_kmers import KMER_CONFIG_FILE, reverse_complement_ids  # noqa: F401 (part of this module's interface)

log = logging.getLogger("tokenize_dna")

BATCH_ROWS = 8192  # windows per numpy batch: bounds memory on long parts
BASES = b"ACGT"
BASE_CODES = np.full(256, -1, dtype=np.int8)  # byte -> 0..3 for ACGT (either case), -1 for anything else
for _code, _base in enumerate(BASES):
    BASE_CODES[_base] = BASE_CODES[_base + 32] = _code
N_SPECIAL = len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class DnaParams:
    """Config `tokenize.dna` (defaults and bounds: the config schema)."""

    SECTION: ClassVar[str] = "tokenize.dna"
    k: int
    overlapping: bool  # stride 1; false = stride k (non-overlapping k-mers)
    max_length: int  # tokens per window, [CLS] and [SEP] included

    @property
    def stride(self) -> int:
        return 1 if self.overlapping else self.k


MODALITY = "dna"
PARAMS = DnaParams


def modality_rows(table: pa.Table) -> pa.Table:
    """Every DNA window row is a model input."""
    return table


def kmer_vocab(k: int) -> dict[str, int]:
    """Specials then every ACGT k-mer in lexicographic order."""
    kmers = ("".join(letters) for letters in itertools.product("ACGT", repeat=k))
    return {token: i for i, token in enumerate(itertools.chain(SPECIAL_TOKENS, kmers))}


def _string_buffers(sequences: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row offsets int64, bytes uint8) of a string column without copying it through Python."""
    array = sequences if isinstance(sequences, pa.Array | pa.ChunkedArray) else pa.array(sequences, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = pc.fill_null(array.cast(pa.large_string()), "")
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return offsets, data


def kmer_ids_batch(sequences: pa.Array | pa.ChunkedArray | Sequence[str], k: int, stride: int,
                   max_length: int) -> pa.ListArray:
    """Per sequence: [CLS], ids of its k-mers at 0, stride, 2*stride, ..., [SEP]; at most max_length ids."""
    offsets, data = _string_buffers(sequences)
    lengths = np.diff(offsets)
    n_kmers = np.where(lengths >= k, (lengths - k) // stride + 1, 0)
    n_kmers = np.minimum(n_kmers, max_length - 2).astype(np.int64)
    codes = BASE_CODES[data[offsets[0]:offsets[-1]]] if len(offsets) else np.zeros(0, np.int8)
    starts = offsets[:-1] - (offsets[0] if len(offsets) else 0)
    n_positions = max(len(codes) - k + 1, 0)
    # Base-4 value of the k-mer starting at every byte: k vectorised multiply-adds.
    values = np.zeros(n_positions, dtype=np.int32)
    for j in range(k):
        values *= 4
        values += codes[j:j + n_positions]
    invalid = np.concatenate([[0], np.cumsum(codes < 0, dtype=np.int64)])
    has_invalid = invalid[k:k + n_positions] > invalid[:n_positions]
    ids_at = np.where(has_invalid, UNK_ID, values + N_SPECIAL).astype(np.int32)
    total = int(n_kmers.sum())
    first_kmer = np.cumsum(n_kmers) - n_kmers
    within = np.arange(total, dtype=np.int64) - np.repeat(first_kmer, n_kmers)
    kmer_ids = ids_at[np.repeat(starts, n_kmers) + stride * within]
    out_offsets = np.concatenate([[0], np.cumsum(n_kmers + 2)]).astype(np.int32)
    flat = np.empty(total + 2 * len(n_kmers), dtype=np.int32)
    flat[out_offsets[:-1]] = CLS_ID
    flat[out_offsets[1:] - 1] = SEP_ID
    flat[np.repeat(out_offsets[:-1] + 1, n_kmers) + within] = kmer_ids
    return pa.ListArray.from_arrays(pa.array(out_offsets, pa.int32()), pa.array(flat, pa.int32()))


def kmer_ids(sequence: str, k: int = 6, stride: int = 1, max_length: int = 512) -> np.ndarray:
    """Token ids of one sequence ([CLS] k-mers [SEP]), as int32."""
    return kmer_ids_batch([sequence], k, stride, max_length).values.to_numpy()


def fit_tokenizer(train_rows: pa.Table, out_dir: str | os.PathLike, params: DnaParams) -> None:
    """Write the k-mer tokenizer folder; the vocabulary is fixed by k, so the data only gets counted."""
    tokenizer = Tokenizer(models.WordLevel(kmer_vocab(params.k), unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    save_fast_tokenizer(tokenizer, out_dir, model_max_length=params.max_length)
    (Path(out_dir) / KMER_CONFIG_FILE).write_text(json.dumps(
        {"k": params.k, "stride": params.stride, "max_length": params.max_length}, indent=1) + "\n")
    log.info("k-mer vocabulary k=%d: %d tokens; %d train windows (vocabulary does not depend on them)",
             params.k, tokenizer.get_vocab_size(), train_rows.num_rows)


def encode_rows(rows: pa.Table, tokenizer_dir: str | os.PathLike, params: DnaParams) -> pa.Table:
    """One row per window: subject_id, the window's record_id, input_ids ([CLS] k-mers [SEP])."""
    saved = json.loads((Path(tokenizer_dir) / KMER_CONFIG_FILE).read_text())
    if saved["k"] != params.k:
        raise ValueError(f"{tokenizer_dir}: tokenizer has k={saved['k']}, asked for k={params.k}; refit it")
    sequences = rows.column("sequence")
    batches = [kmer_ids_batch(sequences.slice(start, BATCH_ROWS), params.k, params.stride, params.max_length)
               for start in range(0, rows.num_rows, BATCH_ROWS)]
    input_ids = pa.chunked_array(batches, pa.list_(pa.int32()))  # chunks keep int32 list offsets in range
    log.info("encoded %d windows into %d k-mer tokens (k=%d, stride %d)", rows.num_rows,
             (pc.sum(pc.list_value_length(input_ids)).as_py() or 0) - 2 * rows.num_rows, params.k, params.stride)
    return ids_table(rows.column("subject_id"), rows.column("record_id"), input_ids)
