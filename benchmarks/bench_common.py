"""What every benchmark script shares: its command line (--repeats, --out) and writing its result file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def bench_parser(doc: str, name: str, repeats: int | None = None) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with --out (results/<name>.json) and --repeats."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="result file (JSON)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="runs per measurement (best is kept)")
    return parser


def write_result(out: Path, result: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
