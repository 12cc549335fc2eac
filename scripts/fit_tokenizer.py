"""Fit one modality's tokenizer on train-split subjects and save it as a folder `transformers` loads.

Also the home of what every modality's tokenizer shares: the special tokens and their ids, typed
parameter parsing, the train-subject filter, saving a `tokenizers.Tokenizer` as a `PreTrainedTokenizerFast`
folder, and the folder checksum that encoded shards record. The modality modules (`tokenize_text`,
`tokenize_ehr`, `tokenize_dna`, `tokenize_image`) each provide the same four names:
`PARAMS` (a dataclass), `modality_rows(table)`, `fit_tokenizer(train_rows, out_dir, params)` and
`encode_rows(rows, tokenizer_dir, params) -> pa.Table`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from special_tokens import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID  # noqa: F401 (re-exported)
from subject_split import split_of

log = logging.getLogger("fit_tokenizer")

MODALITY_MODULES = {"text": "tokenize_text", "ehr": "tokenize_ehr", "dna": "tokenize_dna", "image": "tokenize_image"}
SPLITS = ("train", "val", "test")
TOKEN_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()),
                          ("input_ids", pa.list_(pa.int32()))])


def modality_module(modality: str) -> types.ModuleType:
    """The module that tokenizes `modality`; imported on demand so a CLI only pays for the one it uses."""
    if modality not in MODALITY_MODULES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITY_MODULES)}")
    return importlib.import_module(MODALITY_MODULES[modality])


def _accepts(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_accepts(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def parse_params(params_type: type, values: dict[str, Any] | None) -> Any:
    """Build the params dataclass from a JSON object; an unknown key or a wrong type raises naming the key."""
    values = dict(values or {})
    hints = typing.get_type_hints(params_type)
    names = {field.name for field in dataclasses.fields(params_type)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"{params_type.__name__}: unknown parameter {key!r}; known: {sorted(names)}")
        if not _accepts(value, hints[key]):
            raise ValueError(f"{params_type.__name__}: parameter {key!r} must be {hints[key]}, got {value!r}")
        if hints[key] is float:
            values[key] = float(value)
    return params_type(**values)


def params_record(modality: str, params: Any) -> dict[str, Any]:
    """Stage parameters as written into Parquet metadata and logs."""
    return {"modality": modality, **dataclasses.asdict(params)}


def parse_fractions(text: str | dict[str, float]) -> dict[str, float]:
    """Split fractions (config `split`) as a dict with exactly train, val and test."""
    fractions = json.loads(text) if isinstance(text, str) else dict(text)
    if set(fractions) != set(SPLITS):
        raise ValueError(f"split fractions need exactly {list(SPLITS)}, got {sorted(fractions)}")
    return fractions


def split_of_rows(subject_ids: pa.ChunkedArray | pa.Array, fractions: dict[str, float]) -> pa.Array:
    """The split of each row's subject: the split stage's pure function of the pseudonym, so a shard job
    needs no split table and a new subject elsewhere never touches it."""
    unique = pc.unique(subject_ids).to_pylist()
    splits = pa.array([split_of(s, fractions) for s in unique], pa.string())
    return pc.take(splits, pc.index_in(subject_ids, value_set=pa.array(unique, pa.int64())))


def train_rows_only(rows: pa.Table, fractions: dict[str, float]) -> pa.Table:
    return rows.filter(pc.equal(split_of_rows(rows.column("subject_id"), fractions), "train"))


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


def fit_modality_tokenizer(modality: str, ingest_parts: Sequence[str | os.PathLike], fractions: dict[str, float],
                           out_dir: str | os.PathLike, params: dict[str, Any] | None = None) -> str:
    """Fit `modality`'s tokenizer on its rows of train-split subjects only; returns the folder's sha256."""
    module = modality_module(modality)
    config = parse_params(module.PARAMS, params)
    rows = module.modality_rows(read_ingest_parts(ingest_parts))
    train_rows = train_rows_only(rows, fractions)
    log.info("fitting %s tokenizer on %d of %d rows (train subjects only) from %d part(s); params %s",
             modality, train_rows.num_rows, rows.num_rows, len(ingest_parts), json.dumps(dataclasses.asdict(config)))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    module.fit_tokenizer(train_rows, out_dir, config)
    digest = tokenizer_sha256(out_dir)
    log.info("wrote %s (sha256 %s)", out_dir, digest)
    return digest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", required=True, choices=sorted(MODALITY_MODULES))
    parser.add_argument("--ingest-parts", required=True, nargs="+", help="results/ingest/<source>/part-*.parquet")
    parser.add_argument("--fractions", required=True, help='config `split` as JSON: {"train": .8, "val": .1, "test": .1}')
    parser.add_argument("--out-dir", required=True, help="tokenizer folder to write")
    parser.add_argument("--params-json", default="{}", help="JSON object: config tokenize.<modality>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fit_modality_tokenizer(args.modality, args.ingest_parts, parse_fractions(args.fractions), args.out_dir,
                           json.loads(args.params_json))


if __name__ == "__main__":
    main()
