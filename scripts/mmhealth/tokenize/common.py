"""Fitting a modality's tokenizer and encoding ingest parts with it, and what every modality shares.

A modality module (`text`, `ehr`, `dna`, `image`) provides `MODALITY`, `PARAMS` (its config dataclass),
`modality_rows(table)`, `fit_tokenizer(train_rows, out_dir, params)` and `encode_rows(rows, tokenizer_dir,
params) -> pa.Table`; `fit_modality_tokenizer` and `encode_shard` run one of them. The tokenizer is fitted
on train-split subjects only. Encoding writes every split file, even when empty, with the stage parameters
and the tokenizer folder's sha256 in its metadata; a row's split is the split stage's pure function of its
subject pseudonym, so a shard job reads only its own ingest part. New data to predict on is written whole to
one file, with the tokenizer fitted on the training data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmhealth.core.config import from_config
from mmhealth.core.parquet_io import write_table
from mmhealth.core.special_tokens import SPECIAL_TOKENS
from mmhealth.split.subject_split import split_of

log = logging.getLogger("fit_tokenizer")

SPLITS = ("train", "val", "test")
STAGE = "tokenize"
ALL_ROWS = "all"  # the one "split" of new data to predict on
TOKEN_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()),
                          ("input_ids", pa.list_(pa.int32()))])


def params_record(modality: str, params: Any) -> dict[str, Any]:
    """Stage parameters as written into Parquet metadata and logs."""
    return {"modality": modality, **dataclasses.asdict(params)}


def parse_fractions(text: str | dict[str, float]) -> dict[str, float]:
    """Split fractions (config `split`) as a dict with exactly train, val and test."""
    fractions = json.loads(text) if isinstance(text, str) else dict(text)
    if set(fractions) != set(SPLITS):
        raise ValueError(f"split fractions need exactly {list(SPLITS)}, got {sorted(fractions)}")
    return fractions


def split_of_rows(subject_ids: pa.ChunkedArray | pa.Array, fractions: dict[str, float],
                  assigned: Mapping[int, str] | None = None) -> pa.Array:
    """The split of each row's subject: its label-stratified assignment (`split/stratify.py`, this shard's
    staged file) for labelled subjects, else the pure hash of the pseudonym, so a shard job needs no
    split table and a new subject elsewhere never touches it."""
    assigned = assigned or {}
    unique = pc.unique(subject_ids).to_pylist()
    splits = pa.array([assigned.get(s) or split_of(s, fractions) for s in unique], pa.string())
    return pc.take(splits, pc.index_in(subject_ids, value_set=pa.array(unique, pa.int64())))


def train_rows_only(rows: pa.Table, fractions: dict[str, float], assigned: Mapping[int, str] | None = None) -> pa.Table:
    return rows.filter(pc.equal(split_of_rows(rows.column("subject_id"), fractions, assigned), "train"))


def read_ingest_parts(paths: Sequence[str | os.PathLike]) -> pa.Table:
    """Concatenate ingest parts (empty parts included); schema metadata dropped."""
    if not paths:
        raise ValueError("no ingest parts given")
    tables = [pq.read_table(path).replace_schema_metadata(None) for path in paths]
    return pa.concat_tables(tables, promote_options="default")


def ids_table(subject_ids: Sequence[int] | np.ndarray | pa.Array | pa.ChunkedArray,
              record_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
              input_ids: Sequence[Sequence[int]] | pa.Array | pa.ChunkedArray) -> pa.Table:
    """A token table in the parquet.md `tokens` schema (text, ehr, dna)."""
    columns = [_as_arrow(values, field.type) for values, field in
               zip((subject_ids, record_ids, input_ids), TOKEN_SCHEMA, strict=True)]
    return pa.Table.from_arrays(columns, schema=TOKEN_SCHEMA)


def _as_arrow(values: Any, arrow_type: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.cast(arrow_type)
    return pa.array(values, type=arrow_type)


def save_fast_tokenizer(tokenizer: Any, out_dir: str | os.PathLike, model_max_length: int | None = None) -> None:
    """Save a `tokenizers.Tokenizer` so `PreTrainedTokenizerFast.from_pretrained(out_dir)` loads it."""
    from transformers import PreTrainedTokenizerFast  # costs seconds: imported only when saving

    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=unk, pad_token=pad, cls_token=cls,
                                   sep_token=sep, mask_token=mask, **extra)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))


def tokenizer_sha256(tokenizer_dir: str | os.PathLike) -> str:
    """Checksum over every file in the tokenizer folder (names and bytes), so shards name what encoded them."""
    root = Path(tokenizer_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: tokenizer folder is missing or empty")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def fit_modality_tokenizer(module: ModuleType, ingest_parts: Sequence[str | os.PathLike], fractions: dict[str, float],
                           out_dir: str | os.PathLike, params: dict[str, Any] | None = None,
                           assigned: Mapping[int, str] | None = None) -> str:
    """Fit `modality`'s tokenizer on its rows of train-split subjects only; returns the folder's sha256."""
    modality = module.MODALITY
    config = from_config(module.PARAMS, params)
    rows = module.modality_rows(read_ingest_parts(ingest_parts))
    train_rows = train_rows_only(rows, fractions, assigned)
    log.info("fitting %s tokenizer on %d of %d rows (train subjects only) from %d part(s); params %s",
             modality, train_rows.num_rows, rows.num_rows, len(ingest_parts), json.dumps(dataclasses.asdict(config)))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    module.fit_tokenizer(train_rows, out_dir, config)
    digest = tokenizer_sha256(out_dir)
    log.info("wrote %s (sha256 %s)", out_dir, digest)
    return digest


def encode_shard(module: ModuleType, ingest_part: str | os.PathLike, fractions: dict[str, float] | None,
                 tokenizer_dir: str | os.PathLike, out_paths: dict[str, str | os.PathLike],
                 params: dict[str, Any] | None = None, assigned: Mapping[int, str] | None = None) -> dict[str, int]:
    """Encode `ingest_part` and write one file per split (keys of `out_paths`: train, val, test), or every
    row to one file (the only key: all; `fractions` unused); rows per output."""
    if set(out_paths) not in (set(SPLITS), {ALL_ROWS}):
        raise ValueError(f"need one output path per split {list(SPLITS)} or one for {ALL_ROWS!r}, "
                         f"got {sorted(out_paths)}")
    modality = module.MODALITY
    config = from_config(module.PARAMS, params)
    part = pq.read_table(ingest_part).replace_schema_metadata(None)
    encoded = module.encode_rows(module.modality_rows(part), tokenizer_dir, config)
    metadata = {**params_record(modality, config), "tokenizer_sha256": tokenizer_sha256(tokenizer_dir)}
    if ALL_ROWS in out_paths:
        write_table(encoded, out_paths[ALL_ROWS], STAGE, metadata)
        log.info("%s: %d %s rows written", Path(ingest_part).name, encoded.num_rows, modality)
        return {ALL_ROWS: encoded.num_rows}
    row_split = split_of_rows(encoded.column("subject_id"), fractions, assigned)
    counts = {}
    for split in SPLITS:
        rows = encoded.filter(pc.equal(row_split, split))
        write_table(rows, out_paths[split], STAGE, metadata)
        counts[split] = rows.num_rows
    log.info("%s: %d %s rows written (train %d, val %d, test %d)", Path(ingest_part).name, encoded.num_rows,
             modality, counts["train"], counts["val"], counts["test"])
    return counts
