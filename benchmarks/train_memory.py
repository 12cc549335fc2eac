"""Peak memory of a training epoch at 1x, 4x and 16x the demo's image rows: it must not grow with the rows.

Writes image token shards shaped like the demo's (64x64 pixels, 3 channels, ~140 training series of ~12
slices at 1x; the number of series stays, each series gets 4x / 16x the slices, as a longer CT series
does), then trains one epoch of a small ViT per scale in a fresh process and reads that process's peak
RSS from training.jsonl. Target: 16x within 1.3x of 1x. JSON to benchmarks/results/train_memory.json.

    .venv/bin/python benchmarks/train_memory.py [--scales 1 4 16] [--series 140]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_common import bench_parser, write_result  # noqa: E402

from mmhealth.core.parquet_io import write_table  # noqa: E402

SIZE, CHANNELS, SHARDS = 64, 3, 4


def write_shards(folder: Path, series: int, slices: int, seed: int) -> tuple[list[Path], pa.Table]:
    """SHARDS image shards (a series' slices in one shard, by subject) and one label per series."""
    rng = np.random.default_rng(seed)
    subjects = np.arange(1, series + 1) * 104729 + seed
    paths = []
    for k in range(SHARDS):
        mine = subjects[subjects % SHARDS == k]
        rows = len(mine) * slices
        values = rng.standard_normal(rows * CHANNELS * SIZE * SIZE, dtype=np.float32)
        offsets = np.arange(rows + 1, dtype=np.int32) * (CHANNELS * SIZE * SIZE)
        table = pa.table({
            "subject_id": pa.array(np.repeat(mine, slices), pa.int64()),
            "record_id": pa.array([f"series-{s}" for s in np.repeat(mine, slices)], pa.string()),
            "pixel_values": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            "channels": pa.array(np.full(rows, CHANNELS), pa.int32()),
            "height": pa.array(np.full(rows, SIZE), pa.int32()),
            "width": pa.array(np.full(rows, SIZE), pa.int32())})
        paths.append(folder / f"shard-{k}.parquet")
        write_table(table, paths[-1], "tokenize", {})
        del table, values
    labels = pa.table({"subject_id": pa.array(subjects, pa.int64()),
                       "record_id": pa.array([f"series-{s}" for s in subjects], pa.string()),
                       "label": ["a" if i % 2 else "b" for i in range(series)]})
    return paths, labels


def child(folder: Path) -> None:
    """One training epoch on the shards in `folder` (train/, val/); prints the epoch row."""
    import pyarrow.parquet as pq
    import torch

    from mmhealth.core.config import from_config
    from mmhealth.train.bags import build_units, read_row_ids
    from mmhealth.train.config import FinetuneConfig
    from mmhealth.train.loop import fit
    from mmhealth.train.models import ClassifierSpec, EncoderInit, FusionClassifier, new_encoder

    torch.set_num_threads(1)
    data = {}
    for split in ("train", "val"):
        files = sorted((folder / split).glob("shard-*.parquet"))
        data[split] = build_units(pq.read_table(folder / split / "labels.parquet"), ["a", "b"],
                                  {"image": read_row_ids(files, "image")}, {"image": files})[0]
    init = from_config(EncoderInit, hidden_size=32, num_layers=1, num_heads=2, patch_size=16)
    encoder = new_encoder("image", init, 0.1, image_shape=data["train"].image_shape)
    model = FusionClassifier(ClassifierSpec("memory", ["image"], ["a", "b"], 32), {"image": encoder})
    cfg = from_config(FinetuneConfig, epochs=1, batch_size=8, max_rows_per_bag=8, checkpoint_every=0)
    fit(model, data["train"], data["val"], cfg, torch.device("cpu"), folder / "training.jsonl")
    print(json.dumps(json.loads((folder / "training.jsonl").read_text().splitlines()[-1])))


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "train_memory")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--series", type=int, default=140, help="training series (the demo has ~140)")
    parser.add_argument("--slices", type=int, default=12, help="slices per series at 1x (the demo: 8-16)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    runs = []
    for scale in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for split, series, seed in (("train", args.series, 1), ("val", 24, 2)):
                (folder / split).mkdir()
                _, labels = write_shards(folder / split, series, args.slices * scale, seed)
                pq.write_table(labels, folder / split / "labels.parquet")
            on_disk = sum(p.stat().st_size for p in (folder / "train").glob("shard-*.parquet"))
            done = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True,
                                  text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append({"scale": scale, "train_rows": args.series * args.slices * scale,
                         "train_shard_mb": round(on_disk / 2**20, 1), "peak_rss_mb": row["peak_rss_mb"],
                         "samples_per_s": row["samples_per_s"]})
            print(json.dumps(runs[-1]))
    base = runs[0]["peak_rss_mb"]
    result = {"date": dt.date.today().isoformat(), "runs": runs,
              "ratio_largest_over_smallest": round(runs[-1]["peak_rss_mb"] / base, 3)}
    write_result(args.out, result)
    print(f"peak RSS {' / '.join(str(r['peak_rss_mb']) for r in runs)} MB at {args.scales}x: "
          f"{result['ratio_largest_over_smallest']}x (target <= 1.3)")


if __name__ == "__main__":
    main()
