"""Entry point of the `finetune` rule: fine-tune one task (encoders f_k per modality, fusion head g) on its
train split with early stopping on val, and save the model folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from mmhealth.core.job_files import path_map, shard_map
from mmhealth.train.finetune import TaskInputs, run_finetune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--modalities", required=True, help="comma-separated")
    parser.add_argument("--labels", required=True, type=Path, help="splits/labels/<task>.parquet")
    parser.add_argument("--shards-json", required=True,
                        help='JSON: {"train": {"<modality>": [shard files]}, "val": {...}}')
    parser.add_argument("--tokenizers-json", required=True, help='JSON: {"<modality>": "tokenizer folder"}')
    parser.add_argument("--model-json", default="{}", help="config tasks.<task>.model")
    parser.add_argument("--finetune-json", default="{}", help="config tasks.<task>.finetune")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--checkpoint-dir", type=Path, help="resumable state; kept when the job fails")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    run_finetune(args.task, args.modalities.split(","), TaskInputs(args.labels, shard_map(args.shards_json),
                                                                    path_map(args.tokenizers_json)),
                 json.loads(args.model_json), json.loads(args.finetune_json), args.out_dir, args.checkpoint_dir)


if __name__ == "__main__":
    main()
