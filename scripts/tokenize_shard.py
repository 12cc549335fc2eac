"""Encode one ingest part with a fitted tokenizer and write its rows into the train, val and test shard files.

Every output file is written, even when empty, with the stage parameters and the tokenizer folder's
sha256 in its metadata. A row's split is the split stage's pure function of its subject pseudonym, so this
job reads only its own ingest part: a new subject in another shard never re-runs it. New data to predict
on is written whole to one file (`--out-all`), with the tokenizer fitted on the training data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from fit_tokenizer import (
    MODALITY_MODULES,
    SPLITS,
    modality_module,
    params_record,
    parse_fractions,
    parse_params,
    split_of_rows,
    tokenizer_sha256,
)
from parquet_io import write_table

log = logging.getLogger("tokenize_shard")

STAGE = "tokenize"
ALL_ROWS = "all"  # the one "split" of new data to predict on


def encode_shard(modality: str, ingest_part: str | os.PathLike, fractions: dict[str, float] | None,
                 tokenizer_dir: str | os.PathLike, out_paths: dict[str, str | os.PathLike],
                 params: dict[str, Any] | None = None) -> dict[str, int]:
    """Encode `ingest_part` and write one file per split (keys of `out_paths`: train, val, test), or every
    row to one file (the only key: all; `fractions` unused); rows per output."""
    if set(out_paths) not in (set(SPLITS), {ALL_ROWS}):
        raise ValueError(f"need one output path per split {list(SPLITS)} or one for {ALL_ROWS!r}, "
                         f"got {sorted(out_paths)}")
    module = modality_module(modality)
    config = parse_params(module.PARAMS, params)
    part = pq.read_table(ingest_part).replace_schema_metadata(None)
    encoded = module.encode_rows(module.modality_rows(part), tokenizer_dir, config)
    metadata = {**params_record(modality, config), "tokenizer_sha256": tokenizer_sha256(tokenizer_dir)}
    if ALL_ROWS in out_paths:
        write_table(encoded, out_paths[ALL_ROWS], STAGE, metadata)
        log.info("%s: %d %s rows written", Path(ingest_part).name, encoded.num_rows, modality)
        return {ALL_ROWS: encoded.num_rows}
    row_split = split_of_rows(encoded.column("subject_id"), fractions)
    counts = {}
    for split in SPLITS:
        rows = encoded.filter(pc.equal(row_split, split))
        write_table(rows, out_paths[split], STAGE, metadata)
        counts[split] = rows.num_rows
    log.info("%s: %d %s rows written (train %d, val %d, test %d)", Path(ingest_part).name, encoded.num_rows,
             modality, counts["train"], counts["val"], counts["test"])
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", required=True, choices=sorted(MODALITY_MODULES))
    parser.add_argument("--ingest-part", required=True, help="results/ingest/<source>/part-<k>.parquet")
    parser.add_argument("--fractions", help="config `split` as JSON (with the three split outputs)")
    parser.add_argument("--tokenizer-dir", required=True, help="folder written by fit_tokenizer.py")
    parser.add_argument("--out-train")
    parser.add_argument("--out-val")
    parser.add_argument("--out-test")
    parser.add_argument("--out-all", help="instead of the split outputs: every row, for prediction on new data")
    parser.add_argument("--params-json", default="{}", help="JSON object: config tokenize.<modality>")
    args = parser.parse_args(argv)
    split_outputs = {"train": args.out_train, "val": args.out_val, "test": args.out_test}
    if args.out_all and not any(split_outputs.values()):
        out_paths, fractions = {ALL_ROWS: args.out_all}, None
    elif not args.out_all and all(split_outputs.values()) and args.fractions:
        out_paths, fractions = split_outputs, parse_fractions(args.fractions)
    else:
        parser.error("give either --fractions with --out-train, --out-val and --out-test, or --out-all alone")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    encode_shard(args.modality, args.ingest_part, fractions, args.tokenizer_dir, out_paths,
                 json.loads(args.params_json))


if __name__ == "__main__":
    main()
