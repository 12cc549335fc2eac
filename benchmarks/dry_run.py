"""Snakemake dry run over 10,000 raw DICOM files and 64 shards: cold (empty raw-file index) and warm.

Writes tiny 16x16 DICOM slices for many subjects, a few FASTA files, a patients and a notes table and one
task's labels into a temporary folder with a config of `shards: 64`, then times
`python -m snakemake -n --cores 2 --configfile config.yaml --snakefile <repo>/Snakefile` twice in that
folder: cold (the workflow reads every raw file's subject at parse time and caches it in the staging folder)
and warm (cache hit). A two-rule workflow's dry run in the same folder is the Snakemake start-up floor.
Target: each dry run < 20 s. Written to benchmarks/results/dry_run.json.

    .venv/bin/python benchmarks/dry_run.py [--dicom-files 10000] [--subjects 1000] [--shards 64]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

REPO = Path(__file__).resolve().parents[1]
UID_ROOT = "1.2.826.0.1.3680043.10.999"  # fixed fake root: reproducible UIDs without generate_uid's cost
IMAGE_SIZE = 16
TASK = "lesion_ct"


def slice_template() -> Dataset:
    """A minimal uncompressed CT slice; per-file identifiers are filled in by write_dicom."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.Rows = ds.Columns = IMAGE_SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 2400, (IMAGE_SIZE, IMAGE_SIZE), np.int16).tobytes()
    return ds


def patient_id(subject: int) -> str:
    return f"BENCH{subject:06d}"


def write_dicom(root: Path, n_files: int, n_subjects: int) -> None:
    """n_files slices spread evenly over n_subjects patients, one series each, in <patient>/IM<z>.dcm."""
    ds = slice_template()
    per_subject = -(-n_files // n_subjects)
    for index in range(n_files):
        subject, z = divmod(index, per_subject)
        ds.PatientID = patient_id(subject)
        ds.StudyInstanceUID = f"{UID_ROOT}.1.{subject}"
        ds.SeriesInstanceUID = f"{UID_ROOT}.2.{subject}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"{UID_ROOT}.3.{subject}.{z}"
        ds.InstanceNumber, ds.ImagePositionPatient = z + 1, [0.0, 0.0, 2.5 * z]
        folder = root / patient_id(subject)
        if z == 0:
            folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"IM{z:04d}.dcm", enforce_file_format=True)


def write_other_inputs(raw: Path, n_subjects: int, seed: int = 0) -> None:
    """FASTA (one 300 bp record per subject in 8 files), patients and notes tables, and the task's labels."""
    rng = np.random.default_rng(seed)
    (raw / "fasta").mkdir(parents=True)
    for k in range(8):
        records = [f">{patient_id(s)}|amplicon\n{''.join(rng.choice(list('ACGT'), 300))}\n"
                   for s in range(k, n_subjects, 8)]
        (raw / "fasta" / f"batch_{k}.fa").write_text("".join(records))
    (raw / "ehr").mkdir()
    (raw / "ehr" / "patients.csv").write_text("patient_id,sex\n" + "".join(
        f"{patient_id(s)},{'FM'[s % 2]}\n" for s in range(n_subjects)))
    (raw / "ehr" / "notes.csv").write_text("patient_id,charttime,text\n" + "".join(
        f"{patient_id(s)},2020-01-{1 + s % 28:02d} 09:00,Routine follow-up visit number {s}.\n"
        for s in range(n_subjects)))
    (raw / "labels").mkdir()
    (raw / "labels" / f"{TASK}.csv").write_text("subject_id,label\n" + "".join(
        f"{patient_id(s)},{int(rng.random() < 0.5)}\n" for s in range(n_subjects)))


def config_text(shards: int) -> str:
    return f"""results: results
privacy: {{salt_file: bench_salt}}
inputs:
  dicom: raw/dicom
  fasta: raw/fasta
  ehr:
    - path: raw/ehr/patients.csv
      subject_id: patient_id
      events:
        - {{code: "SEX//{{sex}}"}}
    - path: raw/ehr/notes.csv
      subject_id: patient_id
      time: charttime
      time_format: '%Y-%m-%d %H:%M'
      events:
        - {{code: NOTE, text_value: text}}
shards: {shards}
tasks:
  {TASK}:
    modalities: [image]
    labels: raw/labels/{TASK}.csv
"""


TWO_RULES = """rule all:
    input: "b.txt"
rule make_b:
    output: "b.txt"
    shell: "touch {output}"
"""


def timed_dry_run(cwd: Path, snakefile: Path, configfile: Path | None) -> dict[str, object]:
    """Wall time, exit code, planned job count and, on failure, the output's last lines."""
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--snakefile", str(snakefile)]
    if configfile is not None:
        command += ["--configfile", str(configfile)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    total = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    result: dict[str, object] = {"seconds": round(seconds, 2), "returncode": done.returncode,
                                 "jobs": int(total.group(1)) if total else None}
    if done.returncode != 0:
        result["error_tail"] = output.strip().splitlines()[-25:]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom-files", type=int, default=10_000)
    parser.add_argument("--subjects", type=int, default=1_000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dry_run.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dryrun-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        write_dicom(work / "raw" / "dicom", args.dicom_files, args.subjects)
        write_other_inputs(work / "raw", args.subjects)
        generate_s = time.perf_counter() - start
        (work / "config.yaml").write_text(config_text(args.shards))
        floor_dir = work / "two_rules"
        floor_dir.mkdir()
        (floor_dir / "Snakefile").write_text(TWO_RULES)
        floor = timed_dry_run(floor_dir, floor_dir / "Snakefile", None)
        cold = timed_dry_run(work, REPO / "Snakefile", work / "config.yaml")
        warm = timed_dry_run(work, REPO / "Snakefile", work / "config.yaml")
    results = {"dicom_files": args.dicom_files, "subjects": args.subjects, "shards": args.shards,
               "generate_inputs_s": round(generate_s, 2), "two_rule_workflow": floor, "cold": cold, "warm": warm,
               "target_s": 20.0,
               "environment": {"date": dt.date.today().isoformat(), "python": platform.python_version(),
                               "cpus": os.cpu_count(), "pydicom": pydicom.__version__}}
    print(f"inputs: {args.dicom_files} DICOM files, {args.subjects} subjects, {args.shards} shards "
          f"(generated in {generate_s:.1f} s)")
    print(f"{'dry run':<18}{'seconds':>9}{'jobs':>7}{'rc':>5}")
    for name, run in (("two-rule floor", floor), ("cold", cold), ("warm", warm)):
        print(f"{name:<18}{run['seconds']:>9}{run['jobs']!s:>7}{run['returncode']:>5}")
        for line in run.get("error_tail", []):
            print(f"    {line}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
