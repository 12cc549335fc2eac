"""Reading an EHR table with the shared CSV reader, against pandas' C parser, in one process on one core.

`mmhealth.ingest.ehr.read_table` (the ingest's read: `ehr_csv` rows, line numbers, ragged and encoding checks,
the mapped columns as a frame) and the raw-file index's pass (`ehr_csv.read_csv(..., as_read=True)` over every
row) against `pandas.read_csv(dtype=object)` of the same file, which checks none of it. Ratios are pandas' time
over ours (1.0: as fast as pandas), best of --repeats interleaved rounds. Printed and written to
benchmarks/results/ehr_csv.json.

    .venv/bin/python benchmarks/ehr_csv.py [--rows 300000]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from mmhealth.ingest import ehr, ehr_csv  # noqa: E402


def write_labs(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("patient_id,charttime,test,value,unit\n")
        for i in range(rows):
            handle.write(f"P{i % 5000:05d},2020-01-{1 + i % 28:02d} 08:{i % 60:02d},TEST{i % 40},"
                         f"{rng.random() * 100:.2f},mg/l\n")


def best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labs.csv"
        write_labs(path, args.rows)
        spec = ehr.parse_table_specs([{"path": str(path), "subject_id": "patient_id", "time": "charttime",
                                       "events": [{"code": "LAB//{test}", "numeric_value": "value"}]}])[0]
        runs = {
            "pandas_read_csv": lambda: pd.read_csv(path, dtype=object, keep_default_na=False),
            "ingest_read_table": lambda: ehr.read_table(spec),
            "index_pass": lambda: sum(1 for _ in ehr_csv.read_csv(path, "utf-8", as_read=True)[1]),
        }
        seconds = {name: best(run, args.repeats) for name, run in runs.items()}
    reference = seconds["pandas_read_csv"]
    result = {"rows": args.rows, "seconds": seconds,
              "ratio_vs_pandas": {name: reference / s for name, s in seconds.items()},
              "rows_per_s": {name: args.rows / s for name, s in seconds.items()}}
    for name, s in seconds.items():
        print(f"{name:20s} {s:7.3f} s  {args.rows / s / 1e6:5.2f} M rows/s  ratio {reference / s:5.2f}")
    out = REPO / "benchmarks" / "results" / "ehr_csv.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
