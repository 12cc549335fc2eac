"""What the three ingest stages share: input listing, checksums, quarantine rows, manifests, shard ownership.

Every ingest stage counts records (a DICOM file, a FASTA record, a CSV row) as it goes and ends by calling
`write_ingest_outputs` (whole folder, every part) or `write_shard_outputs` (one shard's job), which refuse to
write a manifest whose counts do not add up. A record with a subject belongs to the shard of its subject; a
record without one (unreadable file, no PatientID, header not matching the regex) to `unassigned_shard` of
its file, so that exactly one shard job counts and quarantines it. `merge_manifests` (CLI: `merge`) sums the
shard jobs' manifests and concatenates their quarantines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from mmhealth.core.config import from_config
from mmhealth.core.parquet_io import read_metadata, write_partitioned, write_table
from mmhealth.core.pseudonym import record_pseudonym, shard_of, unassigned_shard

log = logging.getLogger(__name__)

STAGE = "ingest"
QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("locator", pa.string()), ("reason", pa.string())])
SHARD_COLUMN = "_shard"
SLICED_MODALITIES = ("ehr",)  # shard jobs read per-shard slices of the inputs (raw_index.stage_ehr_table)
# How each modality's bulk column is stored (parquet_io.LAYOUTS). Window bases uncompressed: zstd gets
# random-looking bases to ~2 bits each at 3x the cost of the rest of the FASTA stage, and the tokens written
# from them downstream take 4 bytes per k-mer anyway. HU pixels as split floats: 4x smaller than raw on CT
# for a few ms per 300 slices, where the default dictionary fails on resized values after costing 3x that.
COLUMN_LAYOUT = {"dna": {"sequence": "raw"}, "image": {"hu": "float_split"}}


@dataclass(frozen=True)
class QuarantineRow:
    """One refused input: file relative to the input root, where in it (`line 3`, `record 2`, `file`), why."""

    source: str
    locator: str
    reason: str


@dataclass
class RecordCounts:
    """Record accounting of one modality: `records_in == records_out + records_quarantined` at the end."""

    records_in: int = 0
    records_out: int = 0
    records_quarantined: int = 0


@dataclass(frozen=True)
class ShardJob:
    """Which records one job writes: those of subjects in shard `shard`, and unassigned ones it owns."""

    shard: int = 0
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1 or not 0 <= self.shard < self.shards:
            raise ValueError(f"shard must be within 0..shards-1 and shards at least 1, got shard={self.shard} "
                             f"shards={self.shards}")

    def owns_subject(self, subject_id: int) -> bool:
        return shard_of(subject_id, self.shards) == self.shard

    def owns_unassigned(self, source: str) -> bool:
        return unassigned_shard(source, self.shards) == self.shard


WHOLE_INPUT = ShardJob(0, 1)  # a job that owns every record (the whole-folder functions)


@dataclass(frozen=True)
class PrivacyParams:
    """config `privacy` as the ingest jobs use it. Build with `from_config` (or `privacy_params`)."""

    SECTION: ClassVar[str] = "privacy"
    min_date_shift_days: int
    scrub_notes: str


def privacy_params(text: str | None = None) -> PrivacyParams:
    """The `privacy` section from JSON text (a rule's `--privacy-json`); schema defaults for absent keys."""
    values = json.loads(text) if text else {}
    values.pop("salt_file", None)
    return from_config(PrivacyParams, values)


@dataclass(frozen=True)
class SourceNames:
    """How an input file is named under results/: `src-` + a keyed hash of its path relative to the input
    root (file and folder names often hold patient names, ids or UIDs). The hash -> path map of one job is
    written to `map_path`, in the staging folder beside the raw data, never under results/, so an operator
    holding it can still find a quarantined file. One map file per job: parallel shard jobs never share one.
    """

    key: bytes
    map_path: str | os.PathLike | None = None

    def name(self, source: str) -> str:
        return "src-" + record_pseudonym(source, self.key, kind="source")[:20]

    def apply(self, quarantine: Iterable[QuarantineRow], inputs: dict[str, str]) -> tuple[
            list[QuarantineRow], dict[str, str]]:
        """Quarantine rows and input checksums with every source (also where a reason quotes one) named."""
        rows = list(quarantine)
        sources = sorted({*inputs, *(r.source for r in rows)}, key=lambda s: (-len(s), s))
        names = {source: self.name(source) for source in sources}

        def scrub(reason: str) -> str:
            for source in sources:  # longest first: 'a/b.dcm' before 'b.dcm'
                if source in reason:
                    reason = reason.replace(source, names[source])
            return reason

        named = [replace(r, source=names[r.source], reason=scrub(r.reason)) for r in rows]
        if self.map_path is not None:
            write_source_map({names[s]: s for s in sources}, self.map_path)
        return named, {names[k]: v for k, v in inputs.items()}


def read_source_maps(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """name -> relative path from jobs' source maps (the operator's way back from a quarantine row)."""
    mapping: dict[str, str] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            name, _, source = line.partition("\t")
            mapping[name] = source
    return mapping


def unname(text: str, mapping: dict[str, str]) -> str:
    """`text` (a source or a reason) with every input name replaced by its path from `mapping`."""
    for name, source in mapping.items():
        if name in text:
            text = text.replace(name, source)
    return text


def write_source_map(mapping: dict[str, str], path: str | os.PathLike) -> None:
    """`name<TAB>relative path` lines, written atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(f"{name}\t{source}\n" for name, source in sorted(mapping.items())))
    os.replace(tmp, path)


def configure_logging() -> None:
    """INFO lines to stderr, which Snakemake redirects into the job's log."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def progress(iterable: Iterable[Any], desc: str, unit: str) -> Iterable[Any]:
    """tqdm progress on stderr, updated at most every 10 s so job logs stay short."""
    return tqdm(iterable, desc=desc, unit=unit, mininterval=10, file=sys.stderr)


def list_input_files(root: str | os.PathLike, accept: Callable[[Path], bool] | None = None) -> list[Path]:
    """Regular files under `root` at any depth (symlinked folders followed), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist or is not a folder")
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            if path.is_file() and (accept is None or accept(path)):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def source_of(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """The quarantine/manifest name of an input file given as on a command line (absolute or relative to the
    working folder): its path relative to the input root, POSIX style."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")
    if relative == ".." or relative.startswith("../"):
        raise ValueError(f"input file {path} is not under the input root {root}")
    return relative


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large inputs do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes already in memory (a file read once for parsing and checksum)."""
    return hashlib.sha256(data).hexdigest()


def strip_paths(message: str, *paths: str | os.PathLike) -> str:
    """Drop absolute input paths from a library's error message so reasons stay relative and short."""
    for path in paths:
        message = message.replace(str(Path(path).resolve()), "<input>").replace(str(path), "<input>")
    return " ".join(message.split())


def shard_ids(subject_ids: np.ndarray, shards: int) -> np.ndarray:
    """Shard of every row, computed by `pseudonym.shard_of` once per distinct subject."""
    if len(subject_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(subject_ids, return_inverse=True)
    per_subject = np.array([shard_of(int(s), shards) for s in unique], dtype=np.int64)
    return per_subject[inverse]


def part_paths(out_dir: str | os.PathLike, shards: int) -> list[Path]:
    """`part-<k>.parquet` for k in 0..shards-1, the fixed output names of an ingest stage."""
    return [Path(out_dir) / f"part-{k}.parquet" for k in range(shards)]


def quarantine_table(rows: Iterable[QuarantineRow]) -> pa.Table:
    """Quarantine rows as the schema'd table (an empty table keeps its columns)."""
    rows = list(rows)
    return pa.Table.from_pydict({"source": [r.source for r in rows], "locator": [r.locator for r in rows],
                                 "reason": [r.reason for r in rows]}, schema=QUARANTINE_SCHEMA)


def build_manifest(modality: str, counts: RecordCounts, rows_written: int, inputs: dict[str, str],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest dict; raises if the counts do not add up, because that is a bug, not bad input."""
    if counts.records_in != counts.records_out + counts.records_quarantined:
        raise RuntimeError(f"{modality}: record accounting broken: in={counts.records_in} "
                           f"out={counts.records_out} quarantined={counts.records_quarantined}")
    manifest = {"modality": modality, "records_in": counts.records_in, "records_out": counts.records_out,
                "records_quarantined": counts.records_quarantined, "rows_written": rows_written,
                "inputs": dict(sorted(inputs.items()))}
    manifest.update(extra or {})
    return manifest


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temp file + rename); a dict gets one top-level key per line, each value in
    compact JSON (the C encoder: an indented manifest of 100k records takes seconds in the Python one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(obj, dict) and obj:
        text = "{\n" + ",\n".join(f"  {json.dumps(str(k))}: {json.dumps(v)}" for k, v in obj.items()) + "\n}"
    else:
        text = json.dumps(obj)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def write_ingest_outputs(out_dir: str | os.PathLike, modality: str, table: pa.Table, shards: int,
                         quarantine: Iterable[QuarantineRow], counts: RecordCounts, inputs: dict[str, str],
                         params: dict[str, Any], extra_manifest: dict[str, Any] | None = None, *,
                         names: SourceNames) -> dict[str, Any]:
    """Write part-<k>.parquet (every k), quarantine.parquet and manifest.json; return the manifest. Inputs
    are named by `names` (keyed hashes) in the quarantine and manifest."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    quarantine, inputs = names.apply(quarantine, inputs)
    manifest = build_manifest(modality, counts, table.num_rows, inputs, extra_manifest)
    params = {"modality": modality, "shards": shards, **params}
    shard = shard_ids(table.column("subject_id").to_numpy(), shards)
    with_shard = table.append_column(SHARD_COLUMN, pa.array(shard, type=pa.int64()))
    write_partitioned(with_shard, part_paths(out_dir, shards), SHARD_COLUMN, STAGE, params,
                      layout=COLUMN_LAYOUT.get(modality))
    write_table(quarantine_table(quarantine), Path(out_dir) / "quarantine.parquet", STAGE, params)
    write_json(manifest, Path(out_dir) / "manifest.json")
    log_summary(manifest)
    return manifest


def log_summary(manifest: dict[str, Any]) -> None:
    """One line of counts per modality: no identifiers, no file names."""
    log.info("ingest %s: records_in=%d records_out=%d records_quarantined=%d rows_written=%d inputs=%d",
             manifest["modality"], manifest["records_in"], manifest["records_out"],
             manifest["records_quarantined"], manifest["rows_written"], len(manifest["inputs"]))


def write_shard_outputs(out_part: str | os.PathLike, out_quarantine: str | os.PathLike,
                        out_manifest: str | os.PathLike, modality: str, table: pa.Table, job: ShardJob,
                        quarantine: Iterable[QuarantineRow], counts: RecordCounts, inputs: dict[str, str],
                        params: dict[str, Any], extra_manifest: dict[str, Any] | None = None, *,
                        names: SourceNames) -> dict[str, Any]:
    """Write one shard job's part, quarantine and manifest; refuse rows of another shard (a bug). Inputs
    are named by `names` (keyed hashes) in the quarantine and manifest."""
    quarantine, inputs = names.apply(quarantine, inputs)
    manifest = build_manifest(modality, counts, table.num_rows, inputs,
                              {**(extra_manifest or {}), "shard": job.shard, "shards": job.shards})
    stray = np.flatnonzero(shard_ids(table.column("subject_id").to_numpy(), job.shards) != job.shard)
    if len(stray):
        raise RuntimeError(f"{modality}: {len(stray)} rows of other shards in the output of shard {job.shard}")
    params = {"modality": modality, "shards": job.shards, **params}
    write_table(table, out_part, STAGE, {**params, "shard": job.shard}, layout=COLUMN_LAYOUT.get(modality))
    write_table(quarantine_table(quarantine), out_quarantine, STAGE, {**params, "shard": job.shard})
    write_json(manifest, out_manifest)
    log_summary(manifest)
    return manifest


SUMMED_KEYS = ("records_in", "records_out", "records_quarantined", "rows_written")


def combine_manifests(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Shard manifests as one: counts (and other numbers) summed, mappings unioned, the rest must agree.

    Except the checksums of EHR tables: a shard job reads its slice of each table, and a shard whose slice
    did not change keeps its manifest from an earlier run, with the table's earlier checksum. For those the
    last manifest given wins (`merge_manifests` gives them oldest first)."""
    if not manifests:
        raise ValueError("no manifests to merge")
    shards = {m.get("shards") for m in manifests}
    seen = sorted(m["shard"] for m in manifests if "shard" in m)
    if len(shards) == 1 and None not in shards and seen != list(range(next(iter(shards)))):
        raise ValueError(f"shard manifests do not cover shards 0..{next(iter(shards)) - 1} once each: got {seen}")
    merged: dict[str, Any] = {}
    for manifest in manifests:
        for name, value in manifest.items():
            if name in ("shard", "shards"):
                continue
            if name not in merged:
                merged[name] = dict(value) if isinstance(value, dict) else value
            elif isinstance(value, bool) or not isinstance(value, int | float | dict):
                if merged[name] != value:
                    raise ValueError(f"manifests disagree on {name!r}: {merged[name]!r} vs {value!r}")
            elif isinstance(value, dict):
                clash = sorted(k for k in value.keys() & merged[name].keys() if value[k] != merged[name][k])
                if clash and not (name == "inputs" and merged.get("modality") in SLICED_MODALITIES):
                    raise ValueError(f"manifests disagree on {name}[{clash[0]!r}] (an input changed while "
                                     "the shards ran?)")
                merged[name].update(value)
            else:
                merged[name] += value
    counts = RecordCounts(*(merged.get(k, 0) for k in SUMMED_KEYS[:3]))
    inputs = merged.pop("inputs", {})
    extra = {k: v for k, v in merged.items() if k not in (*SUMMED_KEYS, "modality")}
    return build_manifest(merged["modality"], counts, merged.get("rows_written", 0), inputs, extra)


class QuarantineLimitError(SystemExit):
    """Raised (exit status 1) when a modality's quarantined fraction exceeds `ingest.max_quarantined_fraction`."""


def top_reasons(table: pa.Table, sources: Iterable[str], n: int = 3) -> list[tuple[str, int]]:
    """The `n` commonest quarantine reasons with their counts, every input file name in them read `<file>`
    (file names may be UIDs: they stay in the quarantine table, out of messages and logs)."""
    counts: dict[str, int] = {}
    for item in pc.value_counts(table.column("reason")).to_pylist():
        counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    names = sorted({s for s in sources if s}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, names))) if names else None
    merged: dict[str, int] = {}
    for reason, count in counts.items():
        general = pattern.sub("<file>", reason) if pattern else reason
        merged[general] = merged.get(general, 0) + count
    return sorted(merged.items(), key=lambda item: (-item[1], item[0]))[:n]


def check_quarantined_fraction(manifest: dict[str, Any], quarantine: pa.Table, limit: float | None,
                               where: Iterable[str | os.PathLike] = ()) -> None:
    """QuarantineLimitError naming the modality, the counts, the top reasons and `where` the refused records
    are listed, when more than `limit` of the modality's records were quarantined (None: no limit)."""
    total, refused = manifest["records_in"], manifest["records_quarantined"]
    if limit is None or not total or refused / total <= limit:
        return
    sources = [*manifest.get("inputs", {}), *quarantine.column("source").to_pylist()]
    reasons = "; ".join(f"{count} x {reason[:160]}" for reason, count in top_reasons(quarantine, sources))
    listed = ", ".join(map(str, where))
    raise QuarantineLimitError(
        f"ingest {manifest['modality']}: {refused} of {total} records quarantined ({100 * refused / total:.3g}%), more "
        f"than ingest.max_quarantined_fraction.{manifest['modality']} = {limit:g}. Top reasons: {reasons}. "
        f"Every refused record with its file, row and reason: {listed or 'the quarantine table'}")


def merge_manifests(manifests: Iterable[str | os.PathLike], quarantines: Iterable[str | os.PathLike],
                    out_manifest: str | os.PathLike, out_quarantine: str | os.PathLike,
                    max_quarantined_fraction: float | None = None) -> dict[str, Any]:
    """Merge shard jobs' manifests (re-checking the accounting) and quarantines into one of each; then
    `check_quarantined_fraction` (the shard quarantines it points to survive the failed job's outputs)."""
    by_age = sorted(manifests, key=lambda p: os.stat(p).st_mtime_ns)  # the newest saw the current tables
    manifest = combine_manifests([json.loads(Path(p).read_text()) for p in by_age])
    quarantines = list(quarantines)
    tables = [pq.read_table(p).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA) for p in quarantines]
    params = dict(read_metadata(quarantines[0]).get("params", {})) if quarantines else {}
    params.pop("shard", None)
    table = pa.concat_tables(tables) if tables else quarantine_table([])
    write_table(table.replace_schema_metadata(None), out_quarantine, STAGE, params)
    write_json(manifest, out_manifest)
    log_summary(manifest)
    check_quarantined_fraction(manifest, table, max_quarantined_fraction, quarantines)
    return manifest


def add_shard_arguments(parser: argparse.ArgumentParser, input_help: str, files_help: str | None) -> None:
    """The arguments every per-shard ingest CLI shares (`files_help` None: the stage takes no --files)."""
    if files_help is not None:
        parser.add_argument("--input", required=True, help=input_help)
        parser.add_argument("--files", nargs="*", required=True, default=[],
                            help=f"{files_help}, as given (absolute or relative to the working folder)")
    parser.add_argument("--shard", type=int, required=True, help="K: this job writes subjects of shard K")
    parser.add_argument("--shards", type=int, required=True, help="N: number of shards")
    parser.add_argument("--salt-file", required=True, help="secret pseudonym key file")
    parser.add_argument("--out-part", required=True, help="results/ingest/<modality>/part-K.parquet")
    parser.add_argument("--quarantine", required=True, help="this shard's quarantine Parquet")
    parser.add_argument("--manifest", required=True, help="this shard's manifest JSON")
    parser.add_argument("--privacy-json", default=None, help="the config's `privacy` section as JSON text")
    parser.add_argument("--source-map", default=None,
                        help="where to write this job's input-name -> path map (staging, never results)")
