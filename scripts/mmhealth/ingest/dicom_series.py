"""DICOM headers -> slices -> series geometry: what is read from a header, and when a series is refused.

Every header value is read through `header_value`, which only hands out attributes of `HEADER_ALLOW_LIST`
(the de-identification allow-list documented in `ingest_dicom`). A series is refused whole, never
silently repaired: mixed patients, sizes or pixel spacings, a localizer mixed in, a minority orientation,
duplicate positions, a missing slice or spacing that deviates more than 10% from the median. (Copies of one
image, kept once before these checks, are found by `dicom.split_copies`.)
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

# The only attributes read from a header (functional-group sequences included); nothing else is touched.
HEADER_ALLOW_LIST = frozenset({
    # identity, replaced by keyed pseudonyms before anything is written
    "PatientID", "SeriesInstanceUID",
    # only compared, never written: the same instance exported twice is one image
    "SOPInstanceUID",
    # what kind of object the file is
    "SOPClassUID", "MediaStorageSOPClassUID", "DirectoryRecordSequence", "Modality", "ImageType",
    "BurnedInAnnotation",
    # image pixel module: shape, storage and grey-scale interpretation
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "BitsAllocated",
    "BitsStored", "PixelRepresentation",
    # geometry
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness",
    "InstanceNumber",
    # enhanced multi-frame geometry and rescale, per frame or shared
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "PlanePositionSequence",
    "PlaneOrientationSequence", "PixelMeasuresSequence", "PixelValueTransformationSequence",
    # modality LUT and padding, applied to the pixel values
    "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "PixelPaddingValue", "PixelPaddingRangeLimit",
})
ALLOWED_TAGS = {keyword: Tag(tag_for_keyword(keyword)) for keyword in HEADER_ALLOW_LIST}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
NOT_IMAGE_MODALITIES = frozenset({"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG"})
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 1e-4
DUPLICATE_POSITION_MM = 1e-2
MIN_NORMAL = 1e-6  # |row x column| below this: the direction cosines are parallel, there is no plane
DEGENERATE_ORIENTATION = "degenerate ImageOrientationPatient (row and column directions are parallel)"
MAX_GAP_DEVIATION = 0.10  # a gap more than 10% off the median spacing refuses the series
MULTIFRAME_UNSUPPORTED = "multi-frame geometry not supported"
BINARY_VRS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
TEXT_VRS = {"DS": float, "IS": int, "CS": str, "UI": str}  # ASCII by definition: no character set to apply
# Strings in the dataset's character set (PatientID is LO), by their maximum length: printable ASCII without
# a backslash reads the same in every character set pydicom knows, so only other values need its decoding.
CHARSET_VRS = {"SH": 16, "LO": 64}
PRINTABLE_ASCII = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # no control character (ESC), no backslash


class RefusedFile(Exception):
    """A file that cannot join any series; the message is its quarantine reason."""


class RefusedSeries(Exception):
    """A series refused as a whole; the message is the quarantine reason of each of its files."""


@dataclass(frozen=True)
class SliceHeader:
    """What the series checks and the pixel stage need from one frame; raw ids never leave memory."""

    path: Path
    source: str
    frame: int | None  # frame within a multi-frame file; None for a single-frame file
    patient_id: str
    series_uid: str
    modality: str | None
    rows: int
    cols: int
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...]
    instance_number: int | None
    instance_uid: str  # SOPInstanceUID ("" when absent): finds copies of one instance; memory only
    thickness: float | None
    localizer: bool
    rescale: tuple[float, float] | None  # enhanced frame's (slope, intercept); None: the file's modality LUT


def header_value(ds: Dataset, keyword: str) -> Any:
    """Value of an allow-listed attribute (None when absent); any other attribute is a programming error."""
    tag = ALLOWED_TAGS.get(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not on the de-identification allow-list")
    raw = ds.get_item(tag)
    if raw is None:
        return None
    if isinstance(raw, RawDataElement):
        value = _fast_value(raw)
        if value is not None:
            return value
    return ds[tag].value


def _fast_value(raw: RawDataElement) -> Any:
    """A numeric or ASCII element straight from its bytes (pydicom's conversion costs 10-30 us per element);
    None to leave anything unusual (empty, ambiguous VR, bad text, sequences) to pydicom."""
    vr, data = raw.VR or dictionary_VR(raw.tag), raw.value
    if not data or not isinstance(data, bytes):
        return None
    value = _decoded(vr, data, raw.is_little_endian)
    return list(value) if isinstance(value, tuple) else value  # a fresh list: the cached tuple stays as it is


@lru_cache(maxsize=4096)
def _decoded(vr: str, data: bytes, little_endian: bool) -> Any:
    """`_fast_value` of one element's bytes (several values as a tuple), cached: the files of a series repeat
    most of their values (sizes, spacing, orientation, UIDs), and a cache hit costs a fifth of a decode."""
    if vr in BINARY_VRS:
        size = struct.calcsize(BINARY_VRS[vr])
        if len(data) % size:
            return None
        values = struct.unpack(f"{'<' if little_endian else '>'}{len(data) // size}{BINARY_VRS[vr]}", data)
        return values[0] if len(values) == 1 else values
    if vr in CHARSET_VRS:
        return _plain_string(data, CHARSET_VRS[vr])
    if vr not in TEXT_VRS:
        return None
    try:
        parts = [part.strip(" \x00") for part in data.decode("ascii").split("\\")]
        values = tuple(TEXT_VRS[vr](part) for part in parts)
    except ValueError:
        return None
    return values[0] if len(values) == 1 else values


def _plain_string(data: bytes, max_chars: int) -> str | None:
    """One SH/LO value as pydicom reads it (trailing NULs and spaces dropped) when it is printable ASCII
    within the VR's length; None otherwise: pydicom decodes it, splits it, and warns about what is invalid."""
    value = data.rstrip(b"\0 ")
    return value.decode("ascii") if len(value) <= max_chars and PRINTABLE_ASCII.fullmatch(value) else None


def text(ds: Dataset, keyword: str) -> str:
    value = header_value(ds, keyword)
    return "" if value is None else str(value).strip()


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """`count` finite numbers of a multi-valued element, None when absent; RefusedFile when malformed."""
    value = header_value(ds, keyword)
    # list first: what the fast reader returns, and an ABC check (Sequence) costs 0.3 us
    if value is None or (isinstance(value, list | str | bytes | Sequence) and len(value) == 0):
        return None
    try:
        several = isinstance(value, list) or (isinstance(value, Sequence) and not isinstance(value, str | bytes))
        items = value if several else [value]
        values = tuple(map(float, items))
    except (TypeError, ValueError):
        raise RefusedFile(f"malformed {keyword}") from None
    if len(values) != count or not all(map(math.isfinite, values)):  # numpy costs 2 us on 6 numbers
        raise RefusedFile(f"malformed {keyword} (expected {count} numbers)")
    return values


def number(ds: Dataset, keyword: str, kind: type = float) -> Any:
    try:
        return _as_number(header_value(ds, keyword), keyword, kind)
    except (TypeError, ValueError):
        raise RefusedFile(f"malformed {keyword}") from None


def _as_number(value: Any, keyword: str, kind: type) -> Any:
    """`number` of a value already read."""
    try:
        return None if value in (None, "") else kind(value)
    except (TypeError, ValueError):
        raise RefusedFile(f"malformed {keyword}") from None


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal of the image plane: cross product of the row and column direction cosines."""
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    norm = float(np.linalg.norm(normal))
    if norm < MIN_NORMAL:
        raise RefusedFile(DEGENERATE_ORIENTATION)
    return normal / norm


def check_orientation(orientation: tuple[float, ...]) -> None:
    """RefusedFile when `slice_normal` would refuse `orientation`: the same test in plain floats, since numpy
    costs 20 us on three numbers and every file is checked (the series computes its normal once)."""
    (a, b, c), (d, e, f) = orientation[:3], orientation[3:]
    if math.hypot(b * f - c * e, c * d - a * f, a * e - b * d) < MIN_NORMAL:
        raise RefusedFile(DEGENERATE_ORIENTATION)


def _checked_spacing(spacing: tuple[float, ...] | None) -> tuple[float, ...]:
    if spacing is None:
        raise RefusedFile("missing PixelSpacing")
    if min(spacing) <= 0:
        raise RefusedFile("malformed PixelSpacing (not positive)")
    return spacing


def _group_item(groups: list[Dataset | None], sequence: str, element: str) -> Dataset | None:
    """First functional-group item holding `element`: the frame's own groups win over the shared ones."""
    for group in groups:
        items = None if group is None else header_value(group, sequence)
        if items and element in items[0]:
            return items[0]
    return None


def _enhanced_frames(ds: Dataset, base: dict[str, Any], frames: int) -> list[SliceHeader]:
    """Frames of a functional-group file as slices; RefusedFile when its geometry is not per-frame simple."""
    per_frame = header_value(ds, "PerFrameFunctionalGroupsSequence") or []
    shared = (header_value(ds, "SharedFunctionalGroupsSequence") or [None])[0]
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
        slope, intercept = number(source, "RescaleSlope"), number(source, "RescaleIntercept")
        orientation = _floats(orient, "ImageOrientationPatient", 6)
        position = _floats(plane, "ImagePositionPatient", 3)
        if orientation is None or position is None:
            raise RefusedFile(f"{MULTIFRAME_UNSUPPORTED}: frame {index} has an empty plane position "
                              "or orientation")
        check_orientation(orientation)
        slices.append(SliceHeader(
            **base, frame=index, orientation=orientation, position=position,
            pixel_spacing=_checked_spacing(_floats(measures, "PixelSpacing", 2)),
            thickness=number(measures, "SliceThickness"),
            rescale=(1.0 if slope is None else slope, 0.0 if intercept is None else intercept)))
    return slices


def sop_class(ds: Dataset) -> str:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID when the dataset lacks it ("" if neither)."""
    file_meta = getattr(ds, "file_meta", None)  # no Dataset() as default: it costs 8 us per call
    return text(ds, "SOPClassUID") or ("" if file_meta is None else text(file_meta, "MediaStorageSOPClassUID"))


def is_dicomdir(ds: Dataset, path: Path) -> bool:
    return (path.name.upper() == "DICOMDIR" or sop_class(ds) == DICOMDIR_SOP_CLASS
            or header_value(ds, "DirectoryRecordSequence") is not None)


class FileIds(NamedTuple):
    """What decides a file's shard and series, read once per file (raw ids: memory only)."""

    dicomdir: bool
    patient_id: str  # "" for a DICOMDIR: it has no subject
    series_uid: str


def file_ids(ds: Dataset, path: Path) -> FileIds:
    dicomdir = is_dicomdir(ds, path)
    return FileIds(dicomdir, "" if dicomdir else text(ds, "PatientID"), text(ds, "SeriesInstanceUID"))


def read_slice_headers(ds: Dataset, path: Path, source: str, ids: FileIds | None = None) -> list[SliceHeader]:
    """Slices of one parsed file (one per frame); RefusedFile says why the file cannot join a series.
    `ids`: `file_ids(ds, path)` when the caller has read them already."""
    dicomdir, patient_id, series_uid = file_ids(ds, path) if ids is None else ids
    if dicomdir:
        raise RefusedFile("DICOMDIR (media directory index), not an image")
    if not patient_id:
        raise RefusedFile("missing PatientID")
    if not series_uid:
        raise RefusedFile("missing SeriesInstanceUID")
    modality = text(ds, "Modality") or None
    if modality in NOT_IMAGE_MODALITIES:
        raise RefusedFile(f"Modality {modality} is not an image")
    rows, cols = header_value(ds, "Rows"), header_value(ds, "Columns")
    if rows is None or cols is None:
        uid = sop_class(ds)
        kind = UID(uid).name if uid else "unknown SOP class"
        raise RefusedFile(f"no image pixel module (Rows/Columns missing; {kind})")
    samples = number(ds, "SamplesPerPixel", int) or 1
    photometric = text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RefusedFile(f"not a greyscale image (SamplesPerPixel={samples}, "
                          f"PhotometricInterpretation={photometric})")
    if text(ds, "BurnedInAnnotation").upper() == "YES":
        raise RefusedFile("BurnedInAnnotation is YES: identifying text may be burned into the pixels")
    image_type = header_value(ds, "ImageType")
    kinds = ([] if image_type is None else [str(image_type).upper()] if isinstance(image_type, str | bytes)
             else [str(v).upper() for v in image_type])
    base = {"path": path, "source": source, "patient_id": patient_id, "series_uid": series_uid,
            "modality": modality, "rows": _as_number(rows, "Rows", int), "cols": _as_number(cols, "Columns", int),
            "instance_number": number(ds, "InstanceNumber", int), "localizer": "LOCALIZER" in kinds,
            "instance_uid": text(ds, "SOPInstanceUID")}
    if not (base["rows"] or 0) > 0 or not (base["cols"] or 0) > 0:
        raise RefusedFile("malformed Rows/Columns")
    frames = number(ds, "NumberOfFrames", int) or 1
    if frames < 1:
        raise RefusedFile(f"malformed NumberOfFrames ({frames})")
    if header_value(ds, "PerFrameFunctionalGroupsSequence") is not None:
        return _enhanced_frames(ds, base, frames)
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    position = _floats(ds, "ImagePositionPatient", 3)
    if (orientation is None) != (position is None):
        raise RefusedFile("ImageOrientationPatient and ImagePositionPatient must both be present "
                          "or both absent")
    if orientation is not None:
        check_orientation(orientation)
        if frames > 1:
            raise RefusedFile(f"{MULTIFRAME_UNSUPPORTED}: {frames} frames share one ImagePositionPatient "
                              "(no per-frame functional groups)")
    spacing = _floats(ds, "PixelSpacing", 2) or _floats(ds, "ImagerPixelSpacing", 2)
    common = {**base, "orientation": orientation, "position": position,
              "pixel_spacing": _checked_spacing(spacing), "thickness": number(ds, "SliceThickness"),
              "rescale": None}
    if frames == 1:
        return [SliceHeader(**common, frame=None)]
    return [SliceHeader(**common, frame=index) for index in range(frames)]  # a cine: frames in stored order


def _check_uniform(slices: list[SliceHeader]) -> None:
    first = slices[0]
    if len({s.patient_id for s in slices}) > 1:
        raise RefusedSeries("slices of the series disagree on PatientID")
    sizes = sorted({(s.rows, s.cols) for s in slices})
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sizes)
        raise RefusedSeries(f"slices disagree on Rows/Columns ({listed})")
    spacings = np.array([s.pixel_spacing for s in slices])
    odd = np.flatnonzero(np.abs(spacings - spacings[0]).max(axis=1) > SPACING_TOLERANCE_MM)
    if len(odd):
        raise RefusedSeries(f"slices disagree on PixelSpacing ({list(first.pixel_spacing)} vs "
                            f"{list(slices[odd[0]].pixel_spacing)} mm)")
    localizers = [s for s in slices if s.localizer]
    if 0 < len(localizers) < len(slices):
        raise RefusedSeries(f"localizer mixed into the series: {len(localizers)} of {len(slices)} slices "
                            f"have ImageType LOCALIZER (first: {localizers[0].source})")


def _majority_orientation(slices: list[SliceHeader]) -> tuple[float, ...]:
    """The orientation most slices share; RefusedSeries naming the minority when they do not all agree."""
    orientations = np.array([s.orientation for s in slices])
    if np.abs(orientations - orientations[0]).max() <= ORIENTATION_TOLERANCE:
        return slices[0].orientation
    keys, counts = np.unique(np.round(orientations / ORIENTATION_TOLERANCE).astype(np.int64), axis=0,
                             return_counts=True)
    majority = keys[np.argmax(counts)] * ORIENTATION_TOLERANCE
    odd = np.flatnonzero(np.abs(orientations - majority).max(axis=1) > ORIENTATION_TOLERANCE)
    raise RefusedSeries(f"slices disagree on ImageOrientationPatient: {len(odd)} of {len(slices)} slices "
                        f"differ from the series majority (first: {slices[odd[0]].source}; a localizer "
                        "in the series?)")


def check_spacing(positions: np.ndarray, count: int) -> float | None:
    """Median gap of sorted positions; RefusedSeries for duplicates, a missing slice or uneven spacing."""
    gaps = np.diff(positions)
    if np.any(gaps < DUPLICATE_POSITION_MM):
        repeats = int(np.sum(gaps < DUPLICATE_POSITION_MM))
        raise RefusedSeries(f"duplicate slice positions: {repeats} of {count} slices repeat the position "
                            "of another")
    if not len(gaps):
        return None
    median = float(np.median(gaps))
    deviation = np.abs(gaps - median) / median
    bad = np.flatnonzero(deviation > MAX_GAP_DEVIATION)
    if not len(bad):
        return median
    worst = int(bad[np.argmax(deviation[bad])])
    gap, where = float(gaps[worst]), (f"between slices {worst} and {worst + 1} (at {positions[worst]:.6g} "
                                      f"and {positions[worst + 1]:.6g} mm)")
    ratio = gap / median
    others = f"; {len(bad)} of {len(gaps)} gaps are off by more than {MAX_GAP_DEVIATION:.0%}"
    if ratio >= 2 - MAX_GAP_DEVIATION and abs(ratio - round(ratio)) <= MAX_GAP_DEVIATION * round(ratio):
        raise RefusedSeries(f"missing slice(s): gap of {gap:.6g} mm {where} is {round(ratio)} times the "
                            f"median spacing {median:.6g} mm{others}")
    raise RefusedSeries(f"non-uniform slice spacing: gap of {gap:.6g} mm {where} deviates "
                        f"{abs(ratio - 1):.0%} from the median spacing {median:.6g} mm{others}")


def arrange_series(slices: list[SliceHeader]) -> tuple[list[SliceHeader], list[float | None], float | None]:
    """Slices sorted along the normal, positions (mm), slice spacing; RefusedSeries if incoherent."""
    _check_uniform(slices)
    first = slices[0]
    with_geometry = sum(s.orientation is not None for s in slices)
    if with_geometry == len(slices):
        normal = slice_normal(_majority_orientation(slices))
        positions = np.array([s.position for s in slices]) @ normal
        order = np.argsort(positions, kind="stable")
        spacing = check_spacing(positions[order], len(slices))
        spacing = first.thickness if spacing is None else spacing
        return [slices[i] for i in order], [float(p) for p in positions[order]], spacing
    if with_geometry:
        raise RefusedSeries("ImagePositionPatient present in some slices only")
    if len(slices) == 1:
        return slices, [None], first.thickness
    if any(s.frame is not None for s in slices):
        if len({s.path for s in slices}) > 1:
            raise RefusedSeries("cannot order slices: multi-frame file(s) without ImagePositionPatient "
                                "share the series with other files")
        return sorted(slices, key=lambda s: s.frame), [None] * len(slices), first.thickness
    numbers = [s.instance_number for s in slices]
    if None in numbers or len(set(numbers)) < len(numbers):
        raise RefusedSeries("cannot order slices: no ImagePositionPatient and InstanceNumber "
                            "missing or repeated")
    return sorted(slices, key=lambda s: s.instance_number), [None] * len(slices), first.thickness
