"""Tokenising against its library ceilings, in one process on one core.

DNA: `mmhealth.tokenize.dna.kmer_ids_batch` (and the whole `encode_rows` path) on random sequence in 256 bp windows,
in M k-mers/s, against numpy's own sliding window (`sliding_window_view` of base codes times powers of 4)
over the same bases (target: >= 10 M k-mers/s). Text: `mmhealth.tokenize.text.encode_rows` (ids, note windows,
Arrow table) against the same `tokenizers.Tokenizer`'s bare `encode_batch` on the same notes (target ratio
>= 0.9). Ratios are ours over the bare one, measured in this process,
best of --repeats interleaved rounds. Printed as a table and written to benchmarks/results/tokenize_speed.json.

    .venv/bin/python benchmarks/tokenize_speed.py [--dna-mbases 2] [--notes 3000]
"""

from __future__ import annotations

import os

# One core, before numpy, torch and tokenizers start their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datetime as dt
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tokenizers
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_common import bench_parser  # noqa: E402

from mmhealth.core.config import from_config  # noqa: E402
from mmhealth.demo import data as make_demo_data  # noqa: E402
from mmhealth.tokenize import dna as tokenize_dna  # noqa: E402
from mmhealth.tokenize import text as tokenize_text  # noqa: E402

WINDOW_BP = 256
K = 6


def best_times(repeats: int, runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Fastest wall time of each run over `repeats` rounds; rounds interleave the runs, so noise from the
    shared cores hits ours and the reference alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def random_windows(mbases: float, seed: int = 0) -> pa.Array:
    """Random ACGT sequence cut into WINDOW_BP windows, as an Arrow string column (the ingest layout)."""
    rng = np.random.default_rng(seed)
    n = int(mbases * 1e6) // WINDOW_BP
    bases = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, size=n * WINDOW_BP)]
    offsets = np.arange(0, (n + 1) * WINDOW_BP, WINDOW_BP, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(bases.tobytes()))


def numpy_sliding_kmers(bases: np.ndarray, n_windows: int) -> np.ndarray:
    """Reference: k-mer values of every window with numpy's sliding window; no specials, no validity checks."""
    codes = tokenize_dna.BASE_CODES[bases].reshape(n_windows, WINDOW_BP).astype(np.int32)
    windows = np.lib.stride_tricks.sliding_window_view(codes, K, axis=1)
    return windows @ (4 ** np.arange(K - 1, -1, -1, dtype=np.int32)) + tokenize_dna.N_SPECIAL


def bench_dna(tmp: Path, mbases: float, repeats: int) -> dict[str, float]:
    sequences = random_windows(mbases)
    n = len(sequences)
    kmers = n * (WINDOW_BP - K + 1)
    bases = np.frombuffer(sequences.buffers()[2], np.uint8)[: n * WINDOW_BP]
    ours = tokenize_dna.kmer_ids_batch(sequences, K, 1, 512)
    reference = numpy_sliding_kmers(bases, n)
    # Same ids, so the two timings measure the same work.
    assert np.array_equal(pc.list_flatten(ours).to_numpy().reshape(n, -1)[:, 1:-1], reference)
    params = from_config(tokenize_dna.DnaParams, k=K, max_length=512)
    rows = pa.table({"subject_id": pa.array(np.arange(n) // 50, pa.int64()),
                     "record_id": pa.array([f"{i // 50:024x}" for i in range(n)]), "sequence": sequences})
    tokenizer_dir = tmp / "dna_tokenizer"
    tokenize_dna.fit_tokenizer(rows.slice(0, 10), tokenizer_dir, params)
    t = best_times(repeats, {"ref": lambda: numpy_sliding_kmers(bases, n),
                             "batch": lambda: tokenize_dna.kmer_ids_batch(sequences, K, 1, 512),
                             "encode": lambda: tokenize_dna.encode_rows(rows, tokenizer_dir, params)})
    t_ref, t_batch, t_encode = t["ref"], t["batch"], t["encode"]
    return {"windows": n, "mbases": round(n * WINDOW_BP / 1e6, 2), "kmers": kmers,
            "numpy_sliding_window_mkmers_per_s": round(kmers / t_ref / 1e6, 2),
            "kmer_ids_batch_mkmers_per_s": round(kmers / t_batch / 1e6, 2),
            "encode_rows_mkmers_per_s": round(kmers / t_encode / 1e6, 2),
            "ratio": round(t_ref / t_batch, 3), "ratio_encode_rows": round(t_ref / t_encode, 3),
            "target_mkmers_per_s": 10.0}


def demo_notes(n_notes: int, seed: int = 0) -> list[str]:
    """Notes in the demo's clinical style; one to six demo notes joined, so some span several windows."""
    subjects = make_demo_data.plan_subjects(50, seed)
    rng = np.random.default_rng(seed)
    notes = []
    for i in range(n_notes):
        subject = subjects[i % len(subjects)]
        notes.append(" ".join(make_demo_data._note_text(subject, rng, bool(rng.random() < 0.3))
                              for _ in range(int(rng.integers(1, 7)))))
    return notes


def bench_text(tmp: Path, n_notes: int, repeats: int) -> dict[str, float]:
    notes = demo_notes(n_notes)
    minutes = np.datetime64("2020-01-01T08:00", "us") + np.arange(n_notes) * np.timedelta64(60, "s")
    times = pa.array(minutes.astype("datetime64[us]"), pa.timestamp("us"))
    rows = pa.table({"subject_id": pa.array(np.arange(n_notes) // 5, pa.int64()), "time": times,
                     "text_value": notes})
    params = from_config(tokenize_text.TextParams, vocab_size=4000, max_length=128, stride=32)
    tokenizer_dir = tmp / "text_tokenizer"
    tokenize_text.fit_tokenizer(rows, tokenizer_dir, params)
    tokenizer, _, _ = tokenize_text.load_text_tokenizer(tokenizer_dir)
    encoded = tokenize_text.encode_rows(rows, tokenizer_dir, params)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(notes, add_special_tokens=False))
    t = best_times(repeats, {"ref": lambda: tokenizer.encode_batch(notes, add_special_tokens=False),
                             "ours": lambda: tokenize_text.encode_rows(rows, tokenizer_dir, params)})
    t_ref, t_ours = t["ref"], t["ours"]
    return {"notes": n_notes, "tokens": tokens, "windows": encoded.num_rows,
            "encode_batch_notes_per_s": round(n_notes / t_ref, 1),
            "encode_rows_notes_per_s": round(n_notes / t_ours, 1),
            "encode_rows_mtokens_per_s": round(tokens / t_ours / 1e6, 3),
            "ratio": round(t_ref / t_ours, 3), "target_ratio": 0.9}


def print_table(results: dict[str, dict]) -> None:
    rows = [
        ("DNA k-mers (M/s)", "kmer_ids_batch", results["dna"]["kmer_ids_batch_mkmers_per_s"],
         "numpy sliding window", results["dna"]["numpy_sliding_window_mkmers_per_s"], results["dna"]["ratio"],
         ">= 10 M/s"),
        ("DNA k-mers (M/s)", "encode_rows", results["dna"]["encode_rows_mkmers_per_s"],
         "numpy sliding window", results["dna"]["numpy_sliding_window_mkmers_per_s"],
         results["dna"]["ratio_encode_rows"], ">= 10 M/s"),
        ("text notes/s", "encode_rows", results["text"]["encode_rows_notes_per_s"],
         "Tokenizer.encode_batch", results["text"]["encode_batch_notes_per_s"], results["text"]["ratio"],
         "ratio >= 0.9"),
    ]
    header = ("measure", "ours", "value", "reference", "value", "ratio", "target")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "tokenize_speed", repeats=5)
    parser.add_argument("--dna-mbases", type=float, default=2.0, help="million bases of random sequence")
    parser.add_argument("--notes", type=int, default=3000, help="clinical notes to encode")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # stage logs are not what is measured
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        results = {"dna": bench_dna(Path(tmp), args.dna_mbases, args.repeats),
                   "text": bench_text(Path(tmp), args.notes, args.repeats)}
    results["environment"] = {"date": dt.date.today().isoformat(), "python": platform.python_version(),
                              "machine": platform.machine(), "cpus": os.cpu_count(),
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                              "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
                              "numpy": np.__version__, "pyarrow": pa.__version__,
                              "tokenizers": tokenizers.__version__, "torch": torch.__version__}
    print_table(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
