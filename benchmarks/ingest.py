"""Ingest stages against their library ceilings, in one process on one core.

DICOM: our whole `ingest_dicom` stage (read, hash, parse, checks, decode, HU, resize, Parquet, manifest)
against a bare `pydicom.dcmread(f).pixel_array` loop over the same files, for demo-like 64x64 and for
256x256 CT slices written to a temporary folder. FASTA: our whole `ingest_fasta` stage against a bare
line reader (count records and bases) over the same plain and gzip files. Ratios are our throughput over
the bare one (target >= 0.8): `ratio` for the whole stage, `ratio_in_memory` for the stage without
writing its outputs (the bare loops write nothing). Printed and written to benchmarks/results/ingest.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ingest.py [--dicom-files 300] [--fasta-mbases 16]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy starts its thread pool
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are not what is measured (read at tqdm import)

import gzip
import itertools
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_common import bench_parser  # noqa: E402

from mmhealth.ingest.common import WHOLE_INPUT, list_input_files  # noqa: E402
from mmhealth.ingest.dicom import collect_dicom, ingest_dicom  # noqa: E402
from mmhealth.ingest.fasta import WindowParams, collect_fasta, ingest_fasta, is_fasta  # noqa: E402

KEY = b"benchmark-key-" * 4
SLICES_PER_SERIES = 30


def write_ct_series(folder: Path, n_files: int, size: int, seed: int = 0) -> list[Path]:
    """Uncompressed int16 CT slices (rescale to HU), SLICES_PER_SERIES per series and patient."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(n_files):
        series, z = divmod(index, SLICES_PER_SERIES)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName = f"BENCH{series:04d}", "Bench^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"1.2.826.0.1.{series}", f"1.2.826.0.1.{series}.1"
        ds.Modality, ds.InstanceNumber = "CT", z + 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0.0, 0.0, 2.5 * z]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 2400, size=(size, size), dtype=np.int16).tobytes()
        path = folder / f"PAT{series:04d}" / f"IM{z:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_fasta_files(folder: Path, mbases: float, seed: int = 0) -> tuple[list[Path], int]:
    """Demo-like FASTA: records of 1-3 kb in 60-80 column lines, a third of the files gzip-compressed."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, total, number = [], 0, 0
    while total < mbases * 1e6:
        lines, width = [], int(rng.choice([60, 70, 80]))
        for record in range(50):
            length = int(rng.integers(1000, 3001))
            seq = "".join(rng.choice(list("ACGT"), size=length))
            lines.append(f">S{number:05d}|rec{record} targeted panel amplicon len={length}")
            lines.extend(seq[i:i + width] for i in range(0, length, width))
            total += length
        data = ("\n".join(lines) + "\n").encode()
        gz = number % 3 == 2
        path = folder / f"sample_{number:04d}.fa{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0) if gz else data)
        paths.append(path)
        number += 1
    return paths, total


def fresh_folders(parent: Path, name: str) -> Iterator[Path]:
    """A new output folder for every run: a workflow job writes where Snakemake removed the old outputs, so
    overwriting (unlinking) the previous run's files is not part of the stage's cost."""
    return (parent / f"{name}-{run}" for run in itertools.count())


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` runs (the others are noise from shared cores)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bare_dicom(paths: list[Path]) -> None:
    for path in paths:
        pydicom.dcmread(path).pixel_array  # noqa: B018  (decoding is the point)


def bare_fasta(paths: list[Path]) -> tuple[int, int]:
    records = bases = 0
    for path in paths:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            for line in handle:
                if line.startswith(b">"):
                    records += 1
                else:
                    bases += len(line) - 1
    return records, bases


def bench_dicom(tmp: Path, n_files: int, size: int, repeats: int) -> dict[str, float]:
    folder = tmp / f"ct{size}"
    paths = write_ct_series(folder, n_files, size)
    bare = best_of(repeats, lambda: bare_dicom(paths))
    outs = fresh_folders(tmp, f"out{size}")
    ours = best_of(repeats, lambda: ingest_dicom(folder, KEY, next(outs), 1, 64))
    in_memory = best_of(repeats, lambda: collect_dicom(folder, paths, KEY, WHOLE_INPUT, 64).columns.table())
    return {"files": n_files, "size": size, "bare_files_per_s": round(n_files / bare, 1),
            "ours_files_per_s": round(n_files / ours, 1), "ratio": round(bare / ours, 3),
            "ratio_in_memory": round(bare / in_memory, 3)}


def bench_fasta(tmp: Path, mbases: float, repeats: int) -> dict[str, float]:
    folder = tmp / "fasta"
    paths, bases = write_fasta_files(folder, mbases)
    bare = best_of(repeats, lambda: bare_fasta(paths))
    regex = r"^(?P<subject_id>[^|]+)"
    outs = fresh_folders(tmp, "out_fasta")
    ours = best_of(repeats, lambda: ingest_fasta(folder, KEY, next(outs), 1, regex))
    files = list_input_files(folder, is_fasta)
    in_memory = best_of(repeats, lambda: collect_fasta(folder, files, WindowParams(regex), KEY,
                                                       WHOLE_INPUT).table)
    return {"files": len(paths), "mbases": round(bases / 1e6, 2), "bare_mbases_per_s": round(bases / bare / 1e6, 1),
            "ours_mbases_per_s": round(bases / ours / 1e6, 1), "ratio": round(bare / ours, 3),
            "ratio_in_memory": round(bare / in_memory, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "ingest", repeats=3)
    parser.add_argument("--dicom-files", type=int, default=300, help="CT files per image size")
    parser.add_argument("--fasta-mbases", type=float, default=16, help="million bases of FASTA")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # stage logs are not what is measured
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        results = {
            "dicom_64": bench_dicom(Path(tmp), args.dicom_files, 64, args.repeats),
            "dicom_256": bench_dicom(Path(tmp), args.dicom_files, 256, args.repeats),
            "fasta": bench_fasta(Path(tmp), args.fasta_mbases, args.repeats),
        }
    results["environment"] = {"python": platform.python_version(), "machine": platform.machine(),
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "pydicom": pydicom.__version__,
                              "numpy": np.__version__, "target_ratio": 0.8}
    for name, figures in results.items():
        if name != "environment":
            print(f"{name}: ours/bare throughput = {figures['ratio']:.2f}  {figures}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
