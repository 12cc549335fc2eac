"""The training loop against a bare PyTorch loop: same model, same batches, one process, one core.

Ours: `mmhealth.train.loop.fit` for one epoch on token shards written to a temporary folder (streaming
loader, row picking, checkpoint-free run, metrics), its samples/s and data-wait fraction taken from the
epoch row of training.jsonl (validation and batch-norm calibration are outside that timing). Bare: the same
epoch's batches, collated beforehand and held in memory, through forward, cross-entropy, backward, gradient
clipping, AdamW and the scheduler. Both start from the same initial weights. Targets: ratio >= 0.9 and data
wait <= 5 % of step time. Best of --repeats interleaved rounds; JSON to benchmarks/results/train_speed.json.

    .venv/bin/python benchmarks/train_speed.py [--units 256] [--repeats 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import copy
import datetime as dt
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_common import bench_parser, write_result  # noqa: E402

from mmhealth.core.config import from_config  # noqa: E402
from mmhealth.core.parquet_io import write_table  # noqa: E402
from mmhealth.train.bags import build_units, read_row_ids  # noqa: E402
from mmhealth.train.config import FinetuneConfig  # noqa: E402
from mmhealth.train.loop import fit, optimizer_for, warmup_then_linear  # noqa: E402
from mmhealth.train.models import ClassifierSpec, EncoderInit, FusionClassifier, new_encoder  # noqa: E402
from mmhealth.train.stream import BagStream  # noqa: E402

VOCAB, LENGTH = 4000, 128


def write_split(folder: Path, units: int, rows: int, seed: int) -> tuple[Path, pa.Table]:
    """Token shard of `units` subjects with `rows` rows of LENGTH tokens each, and their labels."""
    rng = np.random.default_rng(seed)
    subjects = np.arange(1, units + 1) * 7919 + seed
    ids = rng.integers(5, VOCAB, size=(units * rows, LENGTH)).astype(np.int32)
    path = folder / f"shard-{seed}.parquet"
    write_table(pa.table({"subject_id": pa.array(np.repeat(subjects, rows), pa.int64()),
                          "record_id": pa.nulls(units * rows, pa.string()),
                          "input_ids": pa.array(list(ids), pa.list_(pa.int32()))}), path, "tokenize", {})
    labels = pa.table({"subject_id": pa.array(subjects, pa.int64()), "record_id": pa.nulls(units, pa.string()),
                       "label": ["a" if i % 2 else "b" for i in range(units)]})
    return path, labels


def model(hidden: int, layers: int) -> FusionClassifier:
    torch.manual_seed(0)
    init = from_config(EncoderInit, hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64))
    encoder = new_encoder("text", init, 0.1, vocab_size=VOCAB, max_length=LENGTH)
    return FusionClassifier(ClassifierSpec("bench", ["text"], ["a", "b"], hidden), {"text": encoder})


def ours(start: FusionClassifier, train, val, cfg: FinetuneConfig, folder: Path) -> dict:
    m = copy.deepcopy(start)
    fit(m, train, val, cfg, torch.device("cpu"), folder / "training.jsonl")
    row = [json.loads(x) for x in (folder / "training.jsonl").read_text().splitlines()][-1]
    return {"samples_per_s": row["samples_per_s"], "data_wait_fraction": row["data_wait_fraction"]}


def bare(start: FusionClassifier, batches: list[dict], cfg: FinetuneConfig) -> float:
    m = copy.deepcopy(start).train()
    optimizer = optimizer_for(m, cfg)
    scheduler = warmup_then_linear(optimizer, len(batches))
    started, seen = time.perf_counter(), 0
    for batch in batches:
        loss = torch.nn.functional.cross_entropy(m(batch["inputs"], batch["units"]), batch["labels"],
                                                 label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        seen += batch["units"]
    return seen / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "train_speed", repeats=2)
    parser.add_argument("--units", type=int, default=256, help="training subjects")
    parser.add_argument("--rows", type=int, default=4, help="rows of 128 tokens per subject")
    parser.add_argument("--batch-size", type=int, default=8, help="subjects per batch (x rows = rows per step)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cfg = from_config(FinetuneConfig, epochs=1, batch_size=args.batch_size, max_rows_per_bag=args.rows,
                      checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        splits = {name: write_split(folder, n, args.rows, seed)
                  for name, n, seed in (("train", args.units, 1), ("val", 16, 2))}
        data = {name: build_units(labels, ["a", "b"], {"text": read_row_ids([path], "text")},
                                  {"text": [path]})[0] for name, (path, labels) in splits.items()}
        start = model(args.hidden, args.layers)
        # The batches `fit` trains on in epoch 1 (same seed and partition), held in memory for the bare loop.
        batches = [b for b in BagStream(data["train"], cfg.batch_size, cfg.max_rows_per_bag, train=True,
                                        seed=cfg.seed, epoch=1, shuffle_buffer=cfg.shuffle_buffer) if b["units"] >= 2]
        rounds = []
        for _ in range(args.repeats):
            rounds.append({"ours": ours(start, data["train"], data["val"], cfg, folder),
                           "bare_samples_per_s": bare(start, batches, cfg)})
    best_ours = max(r["ours"]["samples_per_s"] for r in rounds)
    best_bare = max(r["bare_samples_per_s"] for r in rounds)
    result = {"date": dt.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "units": args.units, "rows_per_unit": args.rows,
              "batch_size": args.batch_size, "hidden": args.hidden, "layers": args.layers,
              "ours_samples_per_s": best_ours, "bare_samples_per_s": round(best_bare, 2),
              "ratio": round(best_ours / best_bare, 3),
              "data_wait_fraction": min(r["ours"]["data_wait_fraction"] for r in rounds), "rounds": rounds}
    write_result(args.out, result)
    print(f"ours {best_ours:.1f} samples/s, bare {best_bare:.1f} samples/s, ratio {result['ratio']:.3f} "
          f"(target >= 0.9); data wait {100 * result['data_wait_fraction']:.1f}% of step time (target <= 5%)")


if __name__ == "__main__":
    main()
