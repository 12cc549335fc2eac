"""Entry point of the `predict_task` rule: a trained task's predictions for every unit of a new-data batch."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from mmhealth.core.job_files import shard_map
from mmhealth.predict.new_data import predict_new_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--shards-json", required=True, help='JSON: {"all": {"<modality>": ["shard.parquet", ...]}}')
    parser.add_argument("--training-subjects", required=True, type=Path,
                        help="splits/subjects.parquet of the training run (adds the column training_split)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    predict_new_data(args.model_dir, shard_map(args.shards_json)["all"], args.training_subjects, args.out)


if __name__ == "__main__":
    main()
