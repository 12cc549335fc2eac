"""Ingest DICOM: files at any depth -> series checked and sorted along the slice normal -> one row per slice.

Headers are read first (no pixels) and grouped by SeriesInstanceUID; a series whose slices disagree on
geometry is refused as a whole. Accepted series are decoded through pydicom's installed plugins, mapped
through the modality LUT (Hounsfield units for CT) and resized. Only the columns of the `image` schema leave
this module: raw PatientID and UIDs stay in memory and are replaced by keyed pseudonyms.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import UID

import ingest_common as common
from pseudonym import load_or_create_salt, record_pseudonym, subject_pseudonym

log = logging.getLogger("ingest_dicom")

IMAGE_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("record_id", pa.string()), ("slice_index", pa.int32()),
    ("n_slices", pa.int32()), ("position_mm", pa.float64()), ("modality", pa.string()),
    ("rows", pa.int32()), ("cols", pa.int32()), ("pixel_spacing_mm", pa.list_(pa.float64())),
    ("slice_spacing_mm", pa.float64()), ("hu", pa.list_(pa.float32())),
])
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
NOT_IMAGE_MODALITIES = frozenset({"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG"})
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 1e-4
DUPLICATE_POSITION_MM = 1e-2
MULTIFRAME_UNSUPPORTED = "multi-frame not supported yet"
MAX_REASON_CHARS = 300


class RefusedFile(Exception):
    """A file that cannot join any series; the message is its quarantine reason."""


class RefusedSeries(Exception):
    """A series refused as a whole; the message is the quarantine reason of each of its files."""


@dataclass(frozen=True)
class SliceHeader:
    """What the series checks and the pixel stage need from one frame; raw ids never leave memory."""

    path: Path
    source: str
    frame: int | None  # frame of a functional-group (enhanced) file; None for a classic single-frame file
    patient_id: str
    series_uid: str
    modality: str | None
    rows: int
    cols: int
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...]
    instance_number: int | None
    thickness: float | None
    rescale: tuple[float, float] | None  # enhanced frame's (slope, intercept); None: the file's modality LUT


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """`count` finite numbers of a multi-valued element, None when absent; RefusedFile when malformed."""
    value = ds[keyword].value if keyword in ds else None
    if value is None or (isinstance(value, str | bytes | Sequence) and len(value) == 0):
        return None
    try:
        items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise RefusedFile(f"malformed {keyword}") from None
    if len(values) != count or not all(np.isfinite(values)):
        raise RefusedFile(f"malformed {keyword} (expected {count} numbers)")
    return values


def _number(ds: Dataset, keyword: str, kind: type = float) -> Any:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else kind(value)
    except (TypeError, ValueError):
        raise RefusedFile(f"malformed {keyword}") from None


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal of the image plane: cross product of the row and column direction cosines."""
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise RefusedFile("degenerate ImageOrientationPatient (row and column directions are parallel)")
    return normal / norm


def _checked_spacing(spacing: tuple[float, ...] | None) -> tuple[float, ...]:
    if spacing is None:
        raise RefusedFile("missing PixelSpacing")
    if min(spacing) <= 0:
        raise RefusedFile("malformed PixelSpacing (not positive)")
    return spacing


def _group_item(groups: list[Dataset], sequence: str, element: str) -> Dataset | None:
    """First functional-group item holding `element`: the frame's own groups win over the shared ones."""
    for group in groups:
        if group is not None and group.get(sequence) and element in group.get(sequence)[0]:
            return group.get(sequence)[0]
    return None


def _enhanced_frames(ds: Dataset, base: dict[str, Any], frames: int) -> list[SliceHeader]:
    """Frames of a functional-group file as slices; RefusedFile when its geometry is not per-frame simple."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    if len(per_frame) != frames:
        raise RefusedFile(f"{MULTIFRAME_UNSUPPORTED}: {len(per_frame)} per-frame groups for {frames} frames")
    slices = []
    for index, frame_groups in enumerate(per_frame):
        groups = [frame_groups, shared]
        plane = _group_item(groups, "PlanePositionSequence", "ImagePositionPatient")
        orient = _group_item(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        measures = _group_item(groups, "PixelMeasuresSequence", "PixelSpacing")
        if plane is None or orient is None or measures is None:
            raise RefusedFile(f"{MULTIFRAME_UNSUPPORTED}: frame {index} lacks plane position, "
                              "orientation or pixel spacing")
        transform = _group_item(groups, "PixelValueTransformationSequence", "RescaleSlope")
        source = transform if transform is not None else ds
        slope, intercept = _number(source, "RescaleSlope"), _number(source, "RescaleIntercept")
        orientation = _floats(orient, "ImageOrientationPatient", 6)
        position = _floats(plane, "ImagePositionPatient", 3)
        if orientation is None or position is None:
            raise RefusedFile(f"{MULTIFRAME_UNSUPPORTED}: frame {index} has an empty plane position "
                              "or orientation")
        slice_normal(orientation)
        slices.append(SliceHeader(
            **base, frame=index, orientation=orientation, position=position,
            pixel_spacing=_checked_spacing(_floats(measures, "PixelSpacing", 2)),
            thickness=_number(measures, "SliceThickness"),
            rescale=(1.0 if slope is None else slope, 0.0 if intercept is None else intercept)))
    return slices


def read_slice_headers(path: Path, source: str) -> list[SliceHeader]:
    """Slices of one file from its header alone (one per frame); RefusedFile says why the file cannot join."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise RefusedFile(f"not a DICOM file: {common.strip_paths(str(exc), path)}") from None
    except Exception as exc:
        raise RefusedFile(f"unreadable DICOM header: {type(exc).__name__}: "
                          f"{common.strip_paths(str(exc), path)[:MAX_REASON_CHARS]}") from None
    file_meta = getattr(ds, "file_meta", Dataset())
    sop_class = _text(ds, "SOPClassUID") or _text(file_meta, "MediaStorageSOPClassUID")
    if path.name.upper() == "DICOMDIR" or sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise RefusedFile("DICOMDIR (media directory index), not an image")
    patient_id, series_uid = _text(ds, "PatientID"), _text(ds, "SeriesInstanceUID")
    if not patient_id:
        raise RefusedFile("missing PatientID")
    if not series_uid:
        raise RefusedFile("missing SeriesInstanceUID")
    modality = _text(ds, "Modality") or None
    if modality in NOT_IMAGE_MODALITIES:
        raise RefusedFile(f"Modality {modality} is not an image")
    if "Rows" not in ds or "Columns" not in ds:
        kind = UID(sop_class).name if sop_class else "unknown SOP class"
        raise RefusedFile(f"no image pixel module (Rows/Columns missing; {kind})")
    samples = _number(ds, "SamplesPerPixel", int) or 1
    photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RefusedFile(f"not a greyscale image (SamplesPerPixel={samples}, "
                          f"PhotometricInterpretation={photometric})")
    base = {"path": path, "source": source, "patient_id": patient_id, "series_uid": series_uid,
            "modality": modality, "rows": _number(ds, "Rows", int), "cols": _number(ds, "Columns", int),
            "instance_number": _number(ds, "InstanceNumber", int)}
    if not (base["rows"] or 0) > 0 or not (base["cols"] or 0) > 0:
        raise RefusedFile("malformed Rows/Columns")
    frames = _number(ds, "NumberOfFrames", int) or 1
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, base, frames)
    if frames > 1:
        raise RefusedFile(f"{MULTIFRAME_UNSUPPORTED}: {frames} frames without per-frame functional groups")
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    position = _floats(ds, "ImagePositionPatient", 3)
    if (orientation is None) != (position is None):
        raise RefusedFile("ImageOrientationPatient and ImagePositionPatient must both be present "
                          "or both absent")
    if orientation is not None:
        slice_normal(orientation)
    spacing = _floats(ds, "PixelSpacing", 2) or _floats(ds, "ImagerPixelSpacing", 2)
    return [SliceHeader(**base, frame=None, orientation=orientation, position=position,
                        pixel_spacing=_checked_spacing(spacing), thickness=_number(ds, "SliceThickness"),
                        rescale=None)]


def arrange_series(slices: list[SliceHeader]) -> tuple[list[SliceHeader], list[float | None], float | None]:
    """Slices sorted along the normal, positions (mm), slice spacing; RefusedSeries if incoherent."""
    first = slices[0]
    if len({s.patient_id for s in slices}) > 1:
        raise RefusedSeries("slices of the series disagree on PatientID")
    sizes = sorted({(s.rows, s.cols) for s in slices})
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sizes)
        raise RefusedSeries(f"slices disagree on Rows/Columns ({listed})")
    for s in slices:
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=0, atol=SPACING_TOLERANCE_MM):
            raise RefusedSeries(f"slices disagree on PixelSpacing ({list(first.pixel_spacing)} vs "
                                f"{list(s.pixel_spacing)} mm)")
    with_geometry = sum(s.orientation is not None for s in slices)
    if with_geometry == len(slices):
        for s in slices:
            if not np.allclose(s.orientation, first.orientation, rtol=0, atol=ORIENTATION_TOLERANCE):
                raise RefusedSeries("slices disagree on ImageOrientationPatient (a localizer in the series?)")
        normal = slice_normal(first.orientation)
        positions = np.array([float(np.dot(s.position, normal)) for s in slices])
        order = np.argsort(positions, kind="stable")
        gaps = np.diff(positions[order])
        if np.any(gaps < DUPLICATE_POSITION_MM):
            repeats = int(np.sum(gaps < DUPLICATE_POSITION_MM))
            raise RefusedSeries(f"duplicate slice positions: {repeats} of {len(slices)} slices repeat "
                                "the position of another")
        spacing = float(np.median(gaps)) if len(gaps) else first.thickness
        return [slices[i] for i in order], [float(p) for p in positions[order]], spacing
    if with_geometry:
        raise RefusedSeries("ImagePositionPatient present in some slices only")
    if len(slices) == 1:
        return slices, [None], first.thickness
    numbers = [s.instance_number for s in slices]
    if None in numbers or len(set(numbers)) < len(numbers):
        raise RefusedSeries("cannot order slices: no ImagePositionPatient and InstanceNumber "
                            "missing or repeated")
    return sorted(slices, key=lambda s: s.instance_number), [None] * len(slices), first.thickness


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling with half-pixel centres, antialiased when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # widen the triangle filter when shrinking, so no input pixel is skipped
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(n, rows, cols) -> (n, size, size) float32 by separable bilinear resampling."""
    if frames.shape[1:] == (size, size):
        return frames.astype(np.float32, copy=False)
    row_weights, col_weights = resample_matrix(frames.shape[1], size), resample_matrix(frames.shape[2], size)
    return (row_weights @ frames.astype(np.float64) @ col_weights.T).astype(np.float32)


def padding_mask(raw: np.ndarray, pixel_meta: Dataset) -> np.ndarray:
    """Stored values marked as padding (outside the scanned field of view) by PixelPaddingValue/RangeLimit."""
    value, limit = pixel_meta.get("PixelPaddingValue"), pixel_meta.get("PixelPaddingRangeLimit")
    if not isinstance(value, int):
        return np.zeros(raw.shape, dtype=bool)
    if not isinstance(limit, int):
        return raw == value
    low, high = sorted((value, limit))
    return (raw >= low) & (raw <= high)


def decode_file(path: Path, slices: list[SliceHeader], image_size: int) -> dict[int | None, np.ndarray]:
    """Resized modality-LUT values of a file's frames, keyed by frame (None for a single-frame file)."""
    first = slices[0]
    pixel_meta = Dataset()
    raw = pixel_array(str(path), ds_out=pixel_meta)
    if raw.size % (first.rows * first.cols):
        raise ValueError(f"decoded {raw.shape} does not fit Rows={first.rows} Columns={first.cols}")
    raw = raw.reshape(-1, first.rows, first.cols)
    if first.frame is None:
        values = np.asarray(apply_modality_lut(raw, pixel_meta), dtype=np.float64)
    else:
        if len(raw) <= max(s.frame for s in slices):
            raise ValueError(f"decoded {len(raw)} frames, the header promises more")
        values = raw.astype(np.float64)
        for s in slices:
            values[s.frame] = raw[s.frame] * s.rescale[0] + s.rescale[1]
    padding = padding_mask(raw, pixel_meta)
    for frame, pad in zip(values, padding, strict=True):
        if pad.any() and not pad.all():  # padding reads as the frame's lowest real value, not as -3024 HU
            frame[pad] = frame[~pad].min()
    resized = resize_frames(values, image_size)
    return {s.frame: resized[s.frame or 0] for s in slices}


def series_pixels(ordered: list[SliceHeader], image_size: int, root: Path) -> np.ndarray:
    """(n_slices, size, size) float32 values in slice order; RefusedSeries with the decoder's reason."""
    by_file: dict[Path, list[SliceHeader]] = defaultdict(list)
    for s in ordered:
        by_file[s.path].append(s)
    decoded = {}
    for path, slices in by_file.items():
        try:
            decoded[path] = decode_file(path, slices, image_size)
        except Exception as exc:
            message = common.strip_paths(f"{type(exc).__name__}: {exc}", path, root)[:MAX_REASON_CHARS]
            raise RefusedSeries(f"pixel data of {slices[0].source} could not be decoded: {message}") from None
    return np.stack([decoded[s.path][s.frame] for s in ordered]).astype(np.float32, copy=False)


@dataclass
class ImageColumns:
    """Output columns accumulated series by series (hu as one Arrow list chunk per series)."""

    scalars: dict[str, list]
    hu_chunks: list[pa.Array]

    @classmethod
    def empty(cls) -> ImageColumns:
        return cls({name: [] for name in IMAGE_SCHEMA.names if name != "hu"}, [])

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


def ingest_dicom(input_dir: str | Path, key: bytes, out_dir: str | Path, shards: int,
                 image_size: int = 64) -> dict[str, Any]:
    """Ingest every file under `input_dir`; write part-<k>, quarantine and manifest; return the manifest."""
    if image_size < 1:
        raise ValueError(f"image_size must be at least 1, got {image_size}")
    root = Path(input_dir)
    files = common.list_input_files(root)
    counts = common.RecordCounts(records_in=len(files))
    quarantine: list[common.QuarantineRow] = []
    series: dict[str, list[SliceHeader]] = defaultdict(list)
    columns = ImageColumns.empty()
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its messages may quote header values
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in common.progress(files, "dicom headers", "file"):
            source = common.relative_source(path, root)
            try:
                for header in read_slice_headers(path, source):
                    series[header.series_uid].append(header)
            except RefusedFile as exc:
                quarantine.append(common.QuarantineRow(source, "file", str(exc)))
                counts.records_quarantined += 1
        series_out = 0
        ordered_series = sorted(series.items(), key=lambda item: item[1][0].source)
        for uid, slices in common.progress(ordered_series, "dicom series", "series"):
            record_id = record_pseudonym(uid, key, kind="series")
            sources = sorted({s.source for s in slices})
            try:
                ordered, positions, spacing = arrange_series(slices)
                hu = series_pixels(ordered, image_size, root)
            except RefusedSeries as exc:
                locator = f"series {record_id}"
                quarantine.extend(common.QuarantineRow(src, locator, str(exc)) for src in sources)
                counts.records_quarantined += len(sources)
                continue
            columns.add_series(subject_pseudonym(ordered[0].patient_id, key), record_id, ordered, positions,
                               spacing, hu)
            counts.records_out += len(sources)
            series_out += 1
    if caught:
        log.info("suppressed %d pydicom warnings (they may quote header values)", len(caught))
    return common.write_ingest_outputs(
        out_dir, "image", columns.table(), shards, quarantine, counts,
        common.input_checksums(files, root), {"image_size": image_size},
        {"series_out": series_out, "series_quarantined": len(series) - series_out})


def main(argv: list[str] | None = None) -> None:
    common.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="folder of DICOM files (any depth)")
    parser.add_argument("--salt-file", required=True, help="secret pseudonym key file")
    parser.add_argument("--out-dir", required=True, help="results/ingest/image")
    parser.add_argument("--shards", type=int, required=True, help="number of part-<k>.parquet files")
    parser.add_argument("--image-size", type=int, default=64, help="output rows = cols")
    args = parser.parse_args(argv)
    ingest_dicom(args.input, load_or_create_salt(args.salt_file), args.out_dir, args.shards, args.image_size)


if __name__ == "__main__":
    main()
