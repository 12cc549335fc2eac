"""Entry point of the `evaluate_task` rule: one task's test-split metrics with bootstrap CIs, beside its
baseline and compared with it, calibration and operating points fitted on validation, and the test
predictions of both."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from mmhealth.core.job_files import path_map, shard_map
from mmhealth.evaluate.task import EvalInputs, EvalOutputs, evaluate_task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--modalities", required=True, help="comma-separated")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--labels", required=True, type=Path)
    parser.add_argument("--shards-json", required=True,
                        help='JSON: {"test": {"<modality>": [shard files]}, "train": {...}, "val": {...}}')
    parser.add_argument("--tokenizers-json", required=True, help='JSON: {"<modality>": "tokenizer folder"}')
    parser.add_argument("--ehr-parts", nargs="*", default=[], type=Path, help="ingest/ehr parts, for sex and age subgroups")
    parser.add_argument("--variants-json", default="{}",
                        help='JSON: {"<variant>": {"predictions": file, "kind": ..., "modalities": [...]}}')
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-metrics", required=True, type=Path)
    parser.add_argument("--out-predictions", required=True, type=Path)
    parser.add_argument("--out-baseline-predictions", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    inputs = EvalInputs(args.model_dir, args.labels, shard_map(args.shards_json), path_map(args.tokenizers_json),
                        args.ehr_parts, json.loads(args.variants_json))
    outputs = EvalOutputs(args.out_metrics, args.out_predictions, args.out_baseline_predictions)
    evaluate_task(args.task, args.modalities.split(","), inputs, args.bootstrap, args.seed, outputs)


if __name__ == "__main__":
    main()
