"""The pretraining loop against a bare PyTorch MLM loop: same model, same masked batches, one process, one core.

Ours: `mmhealth.pretrain.loop.pretrain_fit` for one epoch on a token shard written to a temporary folder
(streaming loader, one row per unit, masking per batch, `training.jsonl`; no checkpoint), its tokens/s taken
from the epoch row (the validation loss lies outside that timing). Bare: the same epoch's batches, taken from
the same stream beforehand and held in memory, masked at each step as any MLM loop does (the same
`mask_tokens` with the same generators), through BertForMaskedLM's forward and loss, backward, gradient
clipping, AdamW and the scheduler, from the same initial weights.
Target: ratio >= 0.9. Best of --repeats interleaved rounds; JSON to benchmarks/results/bench_pretrain.json.

    .venv/bin/python benchmarks/bench_pretrain.py [--rows 1024] [--repeats 2]
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
from mmhealth.core.special_tokens import CLS_ID, MASK_ID, SEP_ID, SPECIAL_TOKENS  # noqa: E402
from mmhealth.pretrain.config import PretrainConfig  # noqa: E402
from mmhealth.pretrain.loop import Objective, mask_generator, pretrain_fit, row_units, train_stream  # noqa: E402
from mmhealth.pretrain.models import build_masked_lm  # noqa: E402
from mmhealth.train.distributed import Processes  # noqa: E402
from mmhealth.train.loop import optimizer_for, warmup_then_linear  # noqa: E402

VOCAB, LENGTH = 4000, 128


def write_shard(path: Path, rows: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIAL_TOKENS), VOCAB, size=(rows, LENGTH)).astype(np.int32)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    write_table(pa.table({"subject_id": pa.array(np.arange(1, rows + 1) * 7919 + seed, pa.int64()),
                          "record_id": pa.nulls(rows, pa.string()),
                          "input_ids": pa.array(list(ids), pa.list_(pa.int32()))}), path, "tokenize",
                {"max_length": LENGTH})
    return path


def ours(start, objective, train, val, cfg, folder: Path) -> float:
    m = copy.deepcopy(start)
    pretrain_fit(m, objective, train, val, cfg, torch.device("cpu"), folder / "training.jsonl")
    return [json.loads(x) for x in (folder / "training.jsonl").read_text().splitlines()][-1]["tokens_per_s"]


def bare(start, objective: Objective, batches: list[dict], cfg) -> float:
    m = copy.deepcopy(start).train()
    optimizer = optimizer_for(m, cfg)
    scheduler = warmup_then_linear(optimizer, len(batches))
    started, seen = time.perf_counter(), 0
    for i, rows in enumerate(batches):
        inputs, count = objective.masked_inputs(rows, m, mask_generator(cfg.seed, 1, i))
        loss = m(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += count
    return seen / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "bench_pretrain", repeats=2)
    parser.add_argument("--rows", type=int, default=1024, help="training rows of 128 tokens")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    init = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": max(1, args.hidden // 64)}
    cfg = from_config(PretrainConfig, init=init, epochs=1, batch_size=args.batch_size, checkpoint_every=0,
                      log_every=0)
    objective = Objective("text", cfg.mask_prob, VOCAB, tuple(range(len(SPECIAL_TOKENS))), MASK_ID)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train = row_units([write_shard(folder / "train.parquet", args.rows, 1)], "text")
        val = row_units([write_shard(folder / "val.parquet", 32, 2)], "text")
        torch.manual_seed(0)
        start = build_masked_lm(init, cfg.dropout, VOCAB, LENGTH, None)
        # The batches pretrain_fit trains on in epoch 1 (same seed and partition), held in memory.
        batches = [b["inputs"]["text"] for b in train_stream(train, cfg, 1, Processes())]
        rounds = []
        for _ in range(args.repeats):
            rounds.append({"ours_tokens_per_s": ours(start, objective, train, val, cfg, folder),
                           "bare_tokens_per_s": round(bare(start, objective, batches, cfg), 1)})
    best_ours = max(r["ours_tokens_per_s"] for r in rounds)
    best_bare = max(r["bare_tokens_per_s"] for r in rounds)
    result = {"date": dt.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": args.rows, "length": LENGTH,
              "batch_size": args.batch_size, "hidden": args.hidden, "layers": args.layers,
              "ours_tokens_per_s": best_ours, "bare_tokens_per_s": best_bare,
              "ratio": round(best_ours / best_bare, 3), "rounds": rounds}
    write_result(args.out, result)
    print(f"ours {best_ours:.0f} tokens/s, bare {best_bare:.0f} tokens/s, ratio {result['ratio']:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
