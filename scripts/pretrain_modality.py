"""Entry point of the `pretrain` rule: self-supervised pretraining of one modality's encoder on its
train-split token rows (masked tokens, or masked patches for images), saved as a `transformers` folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from mmhealth.pretrain.run import run_pretrain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modality", required=True)
    parser.add_argument("--shards-json", required=True, help='JSON: {"train": [shard files], "val": [...]}')
    parser.add_argument("--tokenizer-dir", required=True, type=Path, help="tokens/<modality>/tokenizer")
    parser.add_argument("--pretrain-json", default="{}", help="config pretrain.<modality>")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--checkpoint-dir", type=Path, help="resumable state; kept when the job fails")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    shards = {split: [Path(p) for p in paths] for split, paths in json.loads(args.shards_json).items()}
    run_pretrain(args.modality, shards, args.tokenizer_dir, json.loads(args.pretrain_json), args.out_dir,
                 args.checkpoint_dir)


if __name__ == "__main__":
    main()
