"""Shared fixtures: tiny token shards written with the real pyarrow writer, and the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def repo() -> Path:
    return REPO


def write_word_tokenizer(folder: Path, vocab_size: int) -> None:
    """A WordLevel tokenizer.json with ids 0..vocab_size-1, as the tokenize stage leaves one."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    folder.mkdir(parents=True, exist_ok=True)
    Tokenizer(WordLevel(vocab, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))


def synthetic_tokens(root: Path, n_subjects: int = 36, seed: int = 0, vocab_size: int = 40,
                     image_size: int = 8) -> dict[str, np.ndarray]:
    """Token shards for `dna` and `image` where the label is visible: token 7 / a bright centre.

    Returns subject ids and labels per split; shards follow workflow/schemas/parquet.md.
    """
    from mmhealth.core.parquet_io import write_table

    rng = np.random.default_rng(seed)
    subjects = rng.integers(1, 2**62, size=n_subjects)
    labels = np.arange(n_subjects) % 2
    splits = np.array(["train", "val", "test"])[np.arange(n_subjects) % 3]
    write_word_tokenizer(root / "dna" / "tokenizer", vocab_size)
    (root / "image" / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "image" / "tokenizer" / "preprocessor.json").write_text(f'{{"size": {image_size}}}')
    for split in ("train", "val", "test"):
        mask = splits == split
        dna_rows, img_rows = {"subject_id": [], "record_id": [], "input_ids": []}, {
            "subject_id": [], "record_id": [], "pixel_values": [], "channels": [], "height": [], "width": []}
        for s, y in zip(subjects[mask], labels[mask], strict=True):
            for w in range(3):
                ids = rng.integers(8, vocab_size, size=12)
                if y:
                    ids[rng.integers(0, 12)] = 7
                dna_rows["subject_id"].append(int(s))
                dna_rows["record_id"].append(f"rec{s}")
                dna_rows["input_ids"].append([2, *ids.tolist(), 3][: 10 + w])
            for _ in range(2):
                img = rng.normal(0, 0.3, size=(1, image_size, image_size)).astype(np.float32)
                if y:
                    img[:, 2:6, 2:6] += 1.5
                img_rows["subject_id"].append(int(s))
                img_rows["record_id"].append(f"ser{s}")
                img_rows["pixel_values"].append(img.ravel().tolist())
                for k, v in zip(("channels", "height", "width"), img.shape, strict=True):
                    img_rows[k].append(v)
        write_table(pa.table({"subject_id": pa.array(dna_rows["subject_id"], pa.int64()),
                              "record_id": pa.array(dna_rows["record_id"], pa.string()),
                              "input_ids": pa.array(dna_rows["input_ids"], pa.list_(pa.int32()))}),
                    root / "dna" / split / "shard-0.parquet", "tokenize", {"max_length": 16})
        write_table(pa.table({"subject_id": pa.array(img_rows["subject_id"], pa.int64()),
                              "record_id": pa.array(img_rows["record_id"], pa.string()),
                              "pixel_values": pa.array(img_rows["pixel_values"], pa.list_(pa.float32())),
                              **{k: pa.array(img_rows[k], pa.int32()) for k in ("channels", "height", "width")}}),
                    root / "image" / split / "shard-0.parquet", "tokenize", {})
    return {"subjects": subjects, "labels": labels, "splits": splits}


def write_labels(path: Path, info: dict[str, np.ndarray]) -> Path:
    from mmhealth.core.parquet_io import write_table

    write_table(pa.table({
        "subject_id": pa.array(info["subjects"], pa.int64()),
        "record_id": pa.nulls(len(info["subjects"]), pa.string()),
        "label": pa.array(["pos" if y else "neg" for y in info["labels"]], pa.string()),
        "split": pa.array(info["splits"], pa.string()),
    }), path, "task_labels")
    return path


# Split fractions for tokenizer tests; a subject's split is a pure function of its id (subject_split.split_of).
FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


def ids_in_split(split: str, count: int, fractions: dict[str, float] = FRACTIONS) -> list[int]:
    """The first `count` positive subject ids that subject_split.split_of puts in `split`."""
    from mmhealth.split.subject_split import split_of

    found, candidate = [], 1
    while len(found) < count:
        if split_of(candidate, fractions) == split:
            found.append(candidate)
        candidate += 1
    return found


def subjects_for(splits: dict[int, str]) -> dict[int, int]:
    """Map placeholder test ids to real ids whose split is the one asked for."""
    pools = {s: iter(ids_in_split(s, len(splits))) for s in set(splits.values())}
    return {placeholder: next(pools[split]) for placeholder, split in splits.items()}
