"""Ingest DICOM: files at any depth -> series checked and sorted along the slice normal -> one row per slice.

Each file is read once: its bytes are hashed for the manifest, its header parsed up to the pixel data and,
when its subject belongs to this job's shard, its pixels decoded, mapped through the modality LUT
(Hounsfield units for CT) and resized. Files are then grouped by SeriesInstanceUID; copies of one image (the
same SOPInstanceUID, or the same position, with identical values: an instance exported twice) are kept once
and the others quarantined as duplicates, while such files with different pixel data refuse the series; a
series whose slices disagree on geometry is refused whole (see `dicom_series`).

De-identification (DICOM PS3.15 Annex E, basic profile): nothing of a header reaches an output file or a log
except what follows; every other attribute (names, dates, UIDs other than the series, institution,
physicians, device, private tags, ...) is never read (`dicom_series.HEADER_ALLOW_LIST` is enforced).
- PatientID -> `subject_id`, SeriesInstanceUID -> `record_id`: keyed pseudonyms, never the raw values;
  a file without PatientID is quarantined. SOPInstanceUID is only compared (copies of one instance).
- Modality -> `modality`; Rows, Columns, PixelSpacing/ImagerPixelSpacing, ImageOrientationPatient,
  ImagePositionPatient, SliceThickness (or the same from enhanced functional groups) -> the geometry
  columns; InstanceNumber only orders slices without positions.
- Pixel data through RescaleSlope/RescaleIntercept or ModalityLUTSequence and PixelPaddingValue/RangeLimit
  -> `hu`. A file with BurnedInAnnotation YES is quarantined: the basic profile cannot clean its pixels.
- SOPClassUID/MediaStorageSOPClassUID (as its standard name), SamplesPerPixel, PhotometricInterpretation,
  NumberOfFrames, BitsAllocated, BitsStored, PixelRepresentation, ImageType (LOCALIZER) only decide how
  pixels are read or whether the file is accepted, and may be named in a quarantine reason.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mmhealth.core.pseudonym import record_pseudonym, subject_pseudonym
from mmhealth.ingest import common
from mmhealth.ingest.dicom_pixels import FrameResizer, file_values
from mmhealth.ingest.dicom_series import (
    DUPLICATE_POSITION_MM,
    RefusedFile,
    RefusedSeries,
    SliceHeader,
    arrange_series,
    file_ids,
    read_slice_headers,
)

log = logging.getLogger("ingest_dicom")

IMAGE_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("record_id", pa.string()), ("slice_index", pa.int32()),
    ("n_slices", pa.int32()), ("position_mm", pa.float64()), ("modality", pa.string()),
    ("rows", pa.int32()), ("cols", pa.int32()), ("pixel_spacing_mm", pa.list_(pa.float64())),
    ("slice_spacing_mm", pa.float64()), ("hu", pa.list_(pa.float32())),
])
MAX_REASON_CHARS = 300


@dataclass
class ImageColumns:
    """Output columns accumulated series by series (hu as one Arrow list chunk per series)."""

    scalars: dict[str, list] = field(
        default_factory=lambda: {name: [] for name in IMAGE_SCHEMA.names if name != "hu"})
    hu_chunks: list[pa.Array] = field(default_factory=list)

    def add_series(self, subject_id: int, record_id: str, ordered: list[SliceHeader],
                   positions: list[float | None], spacing: float | None, hu: np.ndarray) -> None:
        n, size = len(ordered), hu.shape[1]
        first = ordered[0]
        row_mm, col_mm = first.pixel_spacing
        pixel_spacing = [row_mm * first.rows / size, col_mm * first.cols / size]
        values = {"subject_id": subject_id, "record_id": record_id, "n_slices": n, "modality": first.modality,
                  "rows": size, "cols": size, "pixel_spacing_mm": pixel_spacing, "slice_spacing_mm": spacing}
        for name, value in values.items():
            self.scalars[name].extend([value] * n)
        self.scalars["slice_index"].extend(range(n))
        self.scalars["position_mm"].extend(positions)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * size * size, type=pa.int32())
        self.hu_chunks.append(pa.ListArray.from_arrays(offsets, pa.array(hu.reshape(-1), type=pa.float32())))

    def table(self) -> pa.Table:
        arrays = {name: pa.array(self.scalars[name], type=IMAGE_SCHEMA.field(name).type)
                  for name in self.scalars}
        arrays["hu"] = pa.chunked_array(self.hu_chunks, type=IMAGE_SCHEMA.field("hu").type)
        return pa.Table.from_pydict({name: arrays[name] for name in IMAGE_SCHEMA.names}, schema=IMAGE_SCHEMA)


@dataclass
class DicomResult:
    """What one job collected: rows, refused inputs, counts, checksums, series tallies."""

    columns: ImageColumns = field(default_factory=ImageColumns)
    quarantine: list[common.QuarantineRow] = field(default_factory=list)
    counts: common.RecordCounts = field(default_factory=common.RecordCounts)
    inputs: dict[str, str] = field(default_factory=dict)
    series_out: int = 0
    series_quarantined: int = 0

    def refuse(self, source: str, locator: str, reason: str) -> None:
        self.quarantine.append(common.QuarantineRow(source, locator, reason))
        self.counts.records_quarantined += 1


def parse_file(data: bytes, path: Path) -> tuple[Dataset, int]:
    """The header parsed up to the pixel data, and where that starts; RefusedFile when it is not DICOM."""
    buffer = io.BytesIO(data)
    try:
        return pydicom.dcmread(buffer, stop_before_pixels=True), buffer.tell()
    except InvalidDicomError as exc:
        raise RefusedFile(f"not a DICOM file: {common.strip_paths(str(exc), path)}") from None
    except Exception as exc:
        raise RefusedFile(f"unreadable DICOM header: {type(exc).__name__}: "
                          f"{common.strip_paths(str(exc), path)[:MAX_REASON_CHARS]}") from None


class SeriesCollector:
    """Reads files one by one for one shard job; keeps the job's slices and their resized pixels."""

    def __init__(self, root: Path, key: bytes, job: common.ShardJob, image_size: int) -> None:
        self.root, self.key, self.job = root, key, job
        self.result = DicomResult()
        self.series: dict[str, list[SliceHeader]] = defaultdict(list)
        self.series_patients: dict[str, dict[str, None]] = defaultdict(dict)  # raw ids in file order, memory only
        self.decode_errors: dict[Path, str] = {}
        self.pixels = FrameResizer(image_size)
        self._subjects: dict[str, int] = {}

    def owns(self, patient_id: str, source: str) -> bool:
        if not patient_id:
            return self.job.owns_unassigned(source)
        if patient_id not in self._subjects:
            self._subjects[patient_id] = subject_pseudonym(patient_id, self.key)
        return self.job.owns_subject(self._subjects[patient_id])

    def add_file(self, path: Path, source: str) -> None:
        data = path.read_bytes()
        self.result.inputs[source] = common.sha256_bytes(data)
        try:
            ds, pixel_offset = parse_file(data, path)
            ids = file_ids(ds, path)
        except RefusedFile as exc:  # no subject: counted by the one job that owns this file's path
            if self.job.owns_unassigned(source):
                self.result.counts.records_in += 1
                self.result.refuse(source, "file", str(exc))
            return
        if ids.patient_id and ids.series_uid:
            self.series_patients[ids.series_uid].setdefault(ids.patient_id)
        if not self.owns(ids.patient_id, source):
            return  # another shard's job counts this file
        self.result.counts.records_in += 1
        try:
            slices = read_slice_headers(ds, path, source, ids)
        except RefusedFile as exc:
            self.result.refuse(source, "file", str(exc))
            return
        try:
            values, slopes, intercepts = file_values(ds, slices, data, pixel_offset)
            self.pixels.add([(path, s.frame) for s in slices], values, slopes, intercepts)
        except Exception as exc:
            message = common.strip_paths(f"{type(exc).__name__}: {exc}", path, self.root)[:MAX_REASON_CHARS]
            self.decode_errors[path] = f"pixel data of {source} could not be decoded: {message}"
        for s in slices:
            self.series[s.series_uid].append(s)

    def finish(self) -> DicomResult:
        """Check and assemble every series of this job; refused series go to quarantine file by file."""
        self.pixels.flush()
        result = self.result
        ordered_series = sorted(self.series.items(), key=lambda item: item[1][0].source)
        for uid, slices in common.progress(ordered_series, "dicom series", "series"):
            record_id = record_pseudonym(uid, self.key, kind="series")
            sources = sorted({s.source for s in slices})
            try:
                if len(self.series_patients[uid]) > 1:
                    raise RefusedSeries("slices of the series disagree on PatientID")
                failed = sorted({s.path for s in slices} & self.decode_errors.keys())
                if failed:
                    raise RefusedSeries(self.decode_errors[failed[0]])
                kept, copies = self.split_copies(slices)
                ordered, positions, spacing = arrange_series(kept)
            except RefusedSeries as exc:
                reason = str(exc)
                log.warning("refused series %s (%d files): %s", record_id, len(sources),
                            _without_sources(reason, sources))
                for source in sources:
                    result.refuse(source, f"series {record_id}", reason)
                # a series spanning shards is tallied once: by the shard of its first file's patient
                result.series_quarantined += self.owns(next(iter(self.series_patients[uid])), sources[0])
                self.pixels.discard([(s.path, s.frame) for s in slices])
                continue
            for copy, reason in copies.items():
                result.refuse(copy, f"series {record_id}", reason)
            self.pixels.discard([(s.path, s.frame) for s in slices if s.source in copies])
            hu = np.stack([self.pixels.results.pop((s.path, s.frame)) for s in ordered])
            result.columns.add_series(subject_pseudonym(ordered[0].patient_id, self.key), record_id, ordered,
                                      positions, spacing, hu)
            result.counts.records_out += len(sources) - len(copies)
            result.series_out += 1
        return result

    def file_hu(self, slices: list[SliceHeader]) -> np.ndarray:
        """The full-resolution values (after the modality LUT) of one file's frames, read again: only files
        that claim the same image as another are compared, so the common case keeps no pixels."""
        data = slices[0].path.read_bytes()
        ds, pixel_offset = parse_file(data, slices[0].path)
        values, slopes, intercepts = file_values(ds, slices, data, pixel_offset)
        return np.asarray(values, np.float64) * slopes[:, None, None] + intercepts[:, None, None]

    def split_copies(self, slices: list[SliceHeader]) -> tuple[list[SliceHeader], dict[str, str]]:
        """The series without copies of an image, and each copy's source -> its quarantine reason. Copies are
        files holding the same SOPInstanceUID, or single-frame files at the same position, with identical
        values; the first by source is kept. RefusedSeries when such files differ in their pixel data."""
        by_file: dict[str, list[SliceHeader]] = defaultdict(list)
        for s in sorted(slices, key=lambda s: (s.source, s.frame or 0)):
            by_file[s.source].append(s)
        copies: dict[str, str] = {}
        for group in copy_groups(slices):
            kept = by_file[group[0]]
            reference = self.file_hu(kept)
            for source in group[1:]:
                other = by_file[source]
                same_uid = bool(kept[0].instance_uid) and kept[0].instance_uid == other[0].instance_uid
                what = "a SOPInstanceUID" if same_uid else "a slice position"
                values = self.file_hu(other)
                if values.shape != reference.shape or not np.array_equal(values, reference):
                    kind = "copies of one instance differ" if same_uid else "duplicate slice positions"
                    raise RefusedSeries(f"{kind}: {group[0]} and {source} share {what} but not their pixel data")
                copies[source] = (f"duplicate of {group[0]} (same {what[2:]} and identical pixel data): "
                                  "the image is kept once")
        return [s for s in slices if s.source not in copies], copies


def copy_groups(slices: list[SliceHeader]) -> list[list[str]]:
    """Sources of the files of one series that claim to hold one image (the same SOPInstanceUID, or single-
    frame files at the same ImagePositionPatient), groups of two or more, each in source order."""
    parent: dict[str, str] = {}

    def root(source: str) -> str:
        while parent.setdefault(source, source) != source:
            source = parent[source]
        return source

    first: dict[tuple, str] = {}
    for s in sorted(slices, key=lambda s: s.source):
        keys = [("uid", s.instance_uid)] if s.instance_uid else []
        if s.frame is None and s.position is not None:
            keys.append(("position", *(round(v / DUPLICATE_POSITION_MM) for v in s.position)))
        for key in keys:
            a, b = root(first.setdefault(key, s.source)), root(s.source)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = defaultdict(list)
    for source in sorted({s.source for s in slices}):
        groups[root(source)].append(source)
    return [group for group in groups.values() if len(group) > 1]


def _without_sources(reason: str, sources: list[str]) -> str:
    """A reason fit for the log: file names may be UIDs, so they stay in the quarantine file only."""
    for source in sources:
        reason = reason.replace(source, "<file>")
    return reason


def collect_dicom(root: str | Path, files: Sequence[str | Path], key: bytes, job: common.ShardJob,
                  image_size: int) -> DicomResult:
    """Read `files` (under `root`) and keep the records `job` owns: rows, quarantine, counts, checksums."""
    if image_size < 1:
        raise ValueError(f"image_size must be at least 1, got {image_size}")
    root = Path(root)
    collector = SeriesCollector(root, key, job, image_size)
    sources = sorted((common.source_of(f, root), Path(f)) for f in files)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its messages may quote header values
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for source, path in common.progress(sources, "dicom files", "file"):
            collector.add_file(path, source)
        result = collector.finish()
    if caught:
        log.info("suppressed %d pydicom warnings (they may quote header values)", len(caught))
    return result


def _extra(result: DicomResult) -> dict[str, int]:
    return {"series_out": result.series_out, "series_quarantined": result.series_quarantined}


def ingest_dicom(input_dir: str | Path, key: bytes, out_dir: str | Path, shards: int,
                 image_size: int = 64, source_map: str | Path | None = None) -> dict[str, Any]:
    """Ingest every file under `input_dir`; write part-<k>, quarantine and manifest; return the manifest.
    Files are named by keyed hashes; `source_map` (staging) receives the hash -> path map."""
    files = common.list_input_files(input_dir)
    result = collect_dicom(input_dir, files, key, common.WHOLE_INPUT, image_size)
    return common.write_ingest_outputs(out_dir, "image", result.columns.table(), shards, result.quarantine,
                                       result.counts, result.inputs, {"image_size": image_size},
                                       _extra(result), names=common.SourceNames(key, source_map))


def ingest_dicom_shard(input_dir: str | Path, files: Sequence[str | Path], key: bytes, job: common.ShardJob,
                       out_part: str | Path, out_quarantine: str | Path, out_manifest: str | Path,
                       image_size: int = 64, source_map: str | Path | None = None) -> dict[str, Any]:
    """One shard job: write only `job`'s subjects (and its unassigned files) to one part; return the manifest.
    Files are named by keyed hashes; `source_map` (staging) receives the hash -> path map."""
    result = collect_dicom(input_dir, files, key, job, image_size)
    return common.write_shard_outputs(out_part, out_quarantine, out_manifest, "image", result.columns.table(),
                                      job, result.quarantine, result.counts, result.inputs,
                                      {"image_size": image_size}, _extra(result),
                                      names=common.SourceNames(key, source_map))
