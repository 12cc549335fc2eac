"""Encode one ingest part with a fitted tokenizer and write its rows into the train, val and test shard files.

Every output file is written, even when empty, with the stage parameters and the tokenizer folder's
sha256 in its metadata. A row's split is the split stage's pure function of its subject pseudonym, so this
job reads only its own ingest part: a new subject in another shard never re-runs it.
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


def encode_shard(modality: str, ingest_part: str | os.PathLike, fractions: dict[str, float],
                 tokenizer_dir: str | os.PathLike, out_paths: dict[str, str | os.PathLike],
                 params: dict[str, Any] | None = None) -> dict[str, int]:
    """Encode `ingest_part` and write one file per split (keys of `out_paths`: train, val, test); rows per split."""
    if set(out_paths) != set(SPLITS):
        raise ValueError(f"need one output path per split {list(SPLITS)}, got {sorted(out_paths)}")
    module = modality_module(modality)
    config = parse_params(module.PARAMS, params)
    part = pq.read_table(ingest_part).replace_schema_metadata(None)
    encoded = module.encode_rows(module.modality_rows(part), tokenizer_dir, config)
    row_split = split_of_rows(encoded.column("subject_id"), fractions)
    metadata = {**params_record(modality, config), "tokenizer_sha256": tokenizer_sha256(tokenizer_dir)}
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
    parser.add_argument("--fractions", required=True, help="config `split` as JSON")
    parser.add_argument("--tokenizer-dir", required=True, help="folder written by fit_tokenizer.py")
    parser.add_argument("--out-train", required=True)
    parser.add_argument("--out-val", required=True)
    parser.add_argument("--out-test", required=True)
    parser.add_argument("--params-json", default="{}", help="JSON object: config tokenize.<modality>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    encode_shard(args.modality, args.ingest_part, parse_fractions(args.fractions), args.tokenizer_dir,
                 {"train": args.out_train, "val": args.out_val, "test": args.out_test}, json.loads(args.params_json))


if __name__ == "__main__":
    main()
