"""Entry point of the `fit_tokenizer`, `tokenize_shard` and `predict_tokenize` rules: fit one modality's
tokenizer on train-split subjects (`fit`), or encode one ingest part with it (`encode`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mmhealth.split.assignment import read_assignments
from mmhealth.tokenize import dna, ehr, image, text
from mmhealth.tokenize.common import ALL_ROWS, encode_shard, fit_modality_tokenizer, parse_fractions

# The module that tokenizes each modality; a job's code inputs list only its own (workflow/rules/code.smk).
MODULES = {"text": text, "ehr": ehr, "dna": dna, "image": image}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit the tokenizer on the train-split rows of the ingest parts")
    fit.add_argument("--ingest-parts", required=True, nargs="+", help="results/ingest/<source>/part-*.parquet")
    fit.add_argument("--fractions", required=True, help='config `split` as JSON: {"train": .8, "val": .1, "test": .1}')
    fit.add_argument("--split-files", required=True, nargs="+", help="every shard's staged split assignment")
    fit.add_argument("--out-dir", required=True, help="tokenizer folder to write")
    encode = commands.add_parser("encode", help="encode one ingest part into split shards (or one file)")
    encode.add_argument("--ingest-part", required=True, help="results/ingest/<source>/part-<k>.parquet")
    encode.add_argument("--tokenizer-dir", required=True, help="folder written by `fit`")
    encode.add_argument("--fractions", help="config `split` as JSON (with the three split outputs)")
    encode.add_argument("--split-file", help="this shard's staged split assignment (with the split outputs)")
    encode.add_argument("--out-train")
    encode.add_argument("--out-val")
    encode.add_argument("--out-test")
    encode.add_argument("--out-all", help="instead of the split outputs: every row, for prediction on new data")
    for command in (fit, encode):
        command.add_argument("--modality", required=True, choices=sorted(MODULES))
        command.add_argument("--params-json", default="{}", help="JSON object: config tokenize.<modality>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    module, params = MODULES[args.modality], json.loads(args.params_json)
    if args.command == "fit":
        fractions = parse_fractions(args.fractions)
        fit_modality_tokenizer(module, args.ingest_parts, fractions, args.out_dir, params,
                               read_assignments(args.split_files, fractions))
        return
    split_outputs = {"train": args.out_train, "val": args.out_val, "test": args.out_test}
    if args.out_all and not any(split_outputs.values()):
        encode_shard(module, args.ingest_part, None, args.tokenizer_dir, {ALL_ROWS: args.out_all}, params)
    elif not args.out_all and all(split_outputs.values()) and args.fractions and args.split_file:
        fractions = parse_fractions(args.fractions)
        encode_shard(module, args.ingest_part, fractions, args.tokenizer_dir, split_outputs, params,
                     read_assignments([args.split_file], fractions))
    else:
        parser.error("give --fractions and --split-file with --out-train/-val/-test, or --out-all alone")


if __name__ == "__main__":
    main()
