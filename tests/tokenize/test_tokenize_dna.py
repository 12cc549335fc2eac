"""DNA modality: vectorised k-mer ids against a naive reference, tokenizer equality, reverse complement."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from mmhealth.core.config import from_config
from mmhealth.core.special_tokens import CLS_ID, SEP_ID, UNK_ID
from mmhealth.tokenize.dna import (
    DnaParams,
    encode_rows,
    fit_tokenizer,
    kmer_ids,
    kmer_ids_batch,
    kmer_vocab,
    reverse_complement_ids,
)

COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def naive_ids(sequence: str, k: int, stride: int, max_length: int) -> list[int]:
    """Reference: dictionary lookup of each k-mer string."""
    vocab = kmer_vocab(k)
    kmers = [sequence[i:i + k] for i in range(0, len(sequence) - k + 1, stride)][:max_length - 2]
    return [CLS_ID, *(vocab.get(kmer, UNK_ID) for kmer in kmers), SEP_ID]


def random_sequences(rng, count: int, max_len: int) -> list[str]:
    letters = np.array(list("ACGTN"))
    return ["".join(rng.choice(letters, size=int(rng.integers(0, max_len)), p=[.24, .24, .24, .24, .04]))
            for _ in range(count)]


@pytest.mark.parametrize(("k", "stride", "max_length"), [(1, 1, 512), (3, 3, 512), (6, 1, 512), (6, 6, 40),
                                                         (6, 1, 20)])
def test_vectorised_ids_match_naive_reference(k, stride, max_length):
    sequences = [*random_sequences(np.random.default_rng(k * 10 + stride), 60, 200), "", "ACG", "acgtac", "ACGTRY"]
    got = kmer_ids_batch(sequences, k, stride, max_length).to_pylist()
    assert got == [naive_ids(s.upper(), k, stride, max_length) for s in sequences]


def test_sliced_arrow_input_and_vocab_order():
    array = pa.array(["TTTTTT", "AAAAAAC", "ACGTNA", None])
    got = kmer_ids_batch(array.slice(1), 6, 1, 512).to_pylist()  # a slice has a non-zero buffer offset
    assert got == [[CLS_ID, 5, 6, SEP_ID], [CLS_ID, UNK_ID, SEP_ID], [CLS_ID, SEP_ID]]
    assert kmer_ids("TTTTTT", 6).tolist() == [CLS_ID, 5 + 4**6 - 1, SEP_ID]
    vocab = kmer_vocab(2)
    assert list(vocab)[5:9] == ["AA", "AC", "AG", "AT"] and len(vocab) == 5 + 16


def test_saved_tokenizer_encodes_space_separated_kmers_identically(tmp_path):
    from transformers import PreTrainedTokenizerFast

    params = from_config(DnaParams, k=6, overlapping=True, max_length=512)
    fit_tokenizer(pa.table({"sequence": ["ACGT"]}), tmp_path, params)
    loaded = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    for sequence in [*random_sequences(np.random.default_rng(3), 20, 300), "NNNNNNNN"]:
        kmers = " ".join(sequence[i:i + 6] for i in range(len(sequence) - 5))
        assert loaded(kmers)["input_ids"] == kmer_ids(sequence, 6, 1, 512).tolist()
    assert loaded.cls_token_id == CLS_ID and loaded.unk_token_id == UNK_ID


def test_reverse_complement_ids_match_the_reverse_complement_sequence():
    rng = np.random.default_rng(11)
    for sequence in random_sequences(rng, 30, 120):
        reverse_complement = sequence.translate(COMPLEMENT)[::-1]
        ids = kmer_ids(sequence, 6, 1, 512)
        assert reverse_complement_ids(ids, 6).tolist() == kmer_ids(reverse_complement, 6, 1, 512).tolist()
    ids = kmer_ids("ACGTTGCA", 3, 1, 512)
    assert reverse_complement_ids(reverse_complement_ids(ids, 3), 3).tolist() == ids.tolist()  # an involution


def test_encode_rows_keeps_window_record_ids(tmp_path):
    params = replace(from_config(DnaParams), k=3, overlapping=False, max_length=6)
    fit_tokenizer(pa.table({"sequence": ["ACGT"]}), tmp_path, params)
    rows = pa.table({"subject_id": pa.array([4, 4], pa.int64()), "record_id": ["a" * 24, "b" * 24],
                     "sequence": ["AAACCCGGGTTT", "AC"]})
    table = encode_rows(rows, tmp_path, params)
    vocab = kmer_vocab(3)
    assert table.column("record_id").to_pylist() == ["a" * 24, "b" * 24]
    assert table.column("input_ids").to_pylist() == [[CLS_ID, vocab["AAA"], vocab["CCC"], vocab["GGG"],
                                                      vocab["TTT"], SEP_ID], [CLS_ID, SEP_ID]]
    with pytest.raises(ValueError, match="k=3"):
        encode_rows(rows, tmp_path, from_config(DnaParams, k=4))


def test_throughput_is_vectorised():
    sequences = pa.array(["".join(p) * 64 for p in itertools.islice(itertools.product("ACGT", repeat=5), 800)])
    started = time.perf_counter()
    ids = kmer_ids_batch(sequences, 6, 1, 512)
    rate = (len(ids.values) - 2 * len(ids)) / (time.perf_counter() - started)
    assert rate > 2e6, f"{rate / 1e6:.1f} M k-mers/s: is the batch path looping in Python?"
