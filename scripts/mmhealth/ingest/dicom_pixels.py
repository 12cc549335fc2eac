"""DICOM pixels -> modality-LUT values (Hounsfield units for CT) resized to the configured image size.

Native little-endian pixel data is read straight from the file's bytes (what pydicom's native decoder
returns with its default options); compressed transfer syntaxes go through pydicom's installed decoder plugins.
Frames are resized by two float32 matrix products (antialiased bilinear), rows file by file and columns in
batches of one shape, and a linear rescale is applied after resizing, which is the same result for 1/16 of
the work at 256 -> 64.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mmhealth.ingest.dicom_series import SliceHeader, header_value, number

NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
# Frames of one file are converted and their rows resized in chunks of SCRATCH_BYTES (float32), small enough
# to stay in the core's cache between the two; the row-resized frames then wait until BATCH_BYTES of them have
# their columns resized in one product, which amortises the calls for small frames.
SCRATCH_BYTES = 2**18
BATCH_BYTES = 2 * 2**20
BAND = 8  # outputs per weight block: 8 read 35 of 256 inputs at 256 -> 64; 16 did 2x the work, 4 is slower


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling with half-pixel centres, antialiased when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # widen the triangle filter when shrinking, so no input pixel is skipped
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support)
    return weights / weights.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class BandRun:
    """`count` blocks of BAND outputs with the same weights: block k writes outputs `out_start + k * BAND`
    on from inputs `in_start + k * in_step` on. The interior blocks of a whole-number shrink (256 -> 64,
    512 -> 64) are all alike, so one product over a strided view does them all: 3 calls per pass instead
    of 8 at 256 -> 64, and a call costs about as much as the arithmetic of a block."""

    out_start: int
    count: int
    in_start: int
    in_step: int
    weights: np.ndarray  # (outputs per block, inputs per block) float32


@lru_cache(maxsize=16)
def _bands(n_in: int, n_out: int) -> tuple[BandRun, ...]:
    """Weight blocks of BAND outputs, each multiplying only the inputs it reads (the weights are banded:
    7x fewer operations at 256 -> 64), with alike neighbours merged into runs."""
    weights = resample_matrix(n_in, n_out).astype(np.float32)
    runs: list[BandRun] = []
    for start in range(0, n_out, BAND):
        block = weights[start:start + BAND]
        used = np.flatnonzero(block.any(axis=0))
        first, block = int(used[0]), np.ascontiguousarray(block[:, used[0]:used[-1] + 1])
        last = runs[-1] if runs else None
        step = None if last is None else first - last.in_start if last.count == 1 else last.in_step
        if last is not None and step > 0 and first == last.in_start + last.count * step and \
                last.weights.shape == block.shape and np.array_equal(last.weights, block):
            runs[-1] = BandRun(last.out_start, last.count + 1, last.in_start, step, last.weights)
        else:
            runs.append(BandRun(start, 1, first, 0, block))
    return tuple(runs)


def _windows(array: np.ndarray, axis: int, run: BandRun) -> np.ndarray:
    """The `run.count` input windows of `run` along `axis` of C-contiguous `array`, stacked on a new first
    axis, as one read-only view (neighbouring windows overlap). Built directly on the buffer: as_strided
    costs 3 us a call, more than a product it saves."""
    shape = (run.count, *array.shape[:axis], run.weights.shape[1], *array.shape[axis + 1:])
    strides = (run.in_step * array.strides[axis], *array.strides)
    return np.ndarray(shape, array.dtype, buffer=array, offset=run.in_start * array.strides[axis],
                      strides=strides)  # writeable, but overlapping: only ever read


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(n, rows, cols) -> (n, size, size) float32 by separable bilinear resampling."""
    frames = np.asarray(frames, dtype=np.float32)
    n, rows, cols = frames.shape
    if (rows, cols) == (size, size):
        return frames
    down = np.empty((n, size, cols), dtype=np.float32)  # rows first: contiguous rows make faster products
    resize_rows(frames, size, down)
    return resize_cols(down, size)


def resize_rows(frames: np.ndarray, size: int, out: np.ndarray) -> None:
    """First pass of `resize_frames`: (n, rows, cols) float32 -> `out`, (n, size, cols)."""
    if frames.shape[1] == size:
        out[...] = frames
        return
    frames = np.ascontiguousarray(frames)
    n, _, cols = frames.shape
    for run in _bands(frames.shape[1], size):
        (outputs, width), start = run.weights.shape, run.out_start
        if run.count == 1:  # a slice is cheaper than a view of one window
            np.matmul(run.weights, frames[:, run.in_start:run.in_start + width], out=out[:, start:start + outputs])
            continue
        target = out[:, start:start + run.count * outputs].reshape(n, run.count, outputs, cols)
        np.matmul(run.weights, _windows(frames, 1, run), out=target.transpose(1, 0, 2, 3))


def resize_cols(down: np.ndarray, size: int) -> np.ndarray:
    """Second pass of `resize_frames`: contiguous (n, size, cols) float32 -> a new (n, size, size) array."""
    n, _, cols = down.shape
    if cols == size:
        return down.copy()
    flat = np.ascontiguousarray(down.reshape(n * size, cols))  # `_windows` reads its buffer
    resized = np.empty((n * size, size), dtype=np.float32)
    for run in _bands(cols, size):
        (outputs, width), start = run.weights.shape, run.out_start
        if run.count == 1:
            resized[:, start:start + outputs] = flat[:, run.in_start:run.in_start + width] @ run.weights.T
            continue
        target = resized[:, start:start + run.count * outputs].reshape(n * size, run.count, outputs)
        np.matmul(_windows(flat, 1, run), run.weights.T, out=target.transpose(1, 0, 2))
    return resized.reshape(n, size, size)


def pixel_data_value(data: bytes, offset: int, implicit: bool) -> tuple[int, int] | None:
    """(start, length) of a defined-length Pixel Data value whose element starts at `offset` (little endian,
    PS3.5 7.1.2), None when something else is there."""
    if len(data) < offset + 12 or data[offset:offset + 4] != b"\xe0\x7f\x10\x00":
        return None
    if implicit:
        start, length = offset + 8, struct.unpack_from("<I", data, offset + 4)[0]
    elif data[offset + 4:offset + 6] in (b"OB", b"OW", b"UN"):
        start, length = offset + 12, struct.unpack_from("<I", data, offset + 8)[0]
    else:
        return None
    return None if length == 0xFFFFFFFF or start + length > len(data) else (start, length)


def native_pixels(ds: Dataset, data: bytes, offset: int, frames: int, rows: int,
                  cols: int) -> np.ndarray | None:
    """Stored values of uncompressed little-endian grey-scale data as (frames, rows, cols), read straight
    from the file's bytes as pydicom's native decoder would; None for anything else."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits, signed = header_value(ds, "BitsAllocated"), header_value(ds, "PixelRepresentation")
    if syntax not in NATIVE_LITTLE_ENDIAN or bits not in (8, 16, 32) or signed not in (0, 1):
        return None
    value = pixel_data_value(data, offset, syntax == ImplicitVRLittleEndian)
    count = frames * rows * cols
    if value is None or value[1] < count * bits // 8:
        return None  # let pydicom's decoder say what is wrong
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    raw = np.frombuffer(data, dtype=dtype, count=count, offset=value[0]).reshape(frames, rows, cols)
    unused = bits - (header_value(ds, "BitsStored") or bits)
    if unused > 0 and not _within_stored_bits(raw, bits - unused, signed):
        raw = raw << unused  # bits above BitsStored carry no value (PS3.5 8.1.1): clear them, sign-extending
        raw >>= unused
    return raw


def _within_stored_bits(raw: np.ndarray, stored_bits: int, signed: int) -> bool:
    """Whether clearing the bits above `stored_bits` would leave every value as it is (the usual case):
    a reduction or two instead of two shifted copies of every frame."""
    if raw.size == 0:
        return True
    if signed:
        return -(1 << (stored_bits - 1)) <= raw.min() and raw.max() < 1 << (stored_bits - 1)
    return raw.max() < 1 << stored_bits


def padding_mask(raw: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Stored values marked as padding (outside the scanned field of view), None when nothing is marked."""
    value, limit = header_value(ds, "PixelPaddingValue"), header_value(ds, "PixelPaddingRangeLimit")
    if not isinstance(value, int):
        return None
    if not isinstance(limit, int):
        mask = raw == value
    else:
        low, high = sorted((value, limit))
        mask = (raw >= low) & (raw <= high)
    return mask if mask.any() else None


def _fill_padding(values: np.ndarray, mask: np.ndarray, slopes: np.ndarray) -> None:
    """Padding reads as the frame's lowest real value after rescaling, not as -3024 HU."""
    for frame, pad, slope in zip(values, mask, slopes, strict=True):
        if pad.any() and not pad.all():
            real = frame[~pad]
            frame[pad] = real.min() if slope >= 0 else real.max()


def file_values(ds: Dataset, slices: list[SliceHeader], data: bytes,
                pixel_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames, rows, cols) values before the linear rescale (stored integers, or float32 when a lookup table
    or padding changed them), and per-frame slope and intercept; `ds` was parsed from `data` up to the Pixel
    Data element at `pixel_offset`. Stored integers may be a read-only view of `data`."""
    first = slices[0]
    frames = max(s.frame or 0 for s in slices) + 1
    raw = native_pixels(ds, data, pixel_offset, frames, first.rows, first.cols)
    if raw is None:  # compressed or unusual: pydicom's decoders, on the whole file
        raw = pixel_array(pydicom.dcmread(io.BytesIO(data)))
        if raw.size % (first.rows * first.cols):
            raise ValueError(f"decoded {raw.shape} does not fit Rows={first.rows} Columns={first.cols}")
        raw = raw.reshape(-1, first.rows, first.cols)
        if len(raw) < frames:
            raise ValueError(f"decoded {len(raw)} frames, the header promises {frames}")
    mask = padding_mask(raw, ds)
    if first.rescale is not None:
        slopes = np.array([s.rescale[0] for s in slices], dtype=np.float32)
        intercepts = np.array([s.rescale[1] for s in slices], dtype=np.float32)
        values = raw[[s.frame for s in slices]]
        mask = None if mask is None else mask[[s.frame for s in slices]]
    elif header_value(ds, "ModalityLUTSequence") is not None:  # a lookup table is not linear: apply it first
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        slopes, intercepts = np.ones(len(values), np.float32), np.zeros(len(values), np.float32)
    else:
        slope, intercept = number(ds, "RescaleSlope"), number(ds, "RescaleIntercept")
        values = raw  # converted to float32 by FrameResizer.add, in the one pass that copies them
        slopes = np.full(len(values), 1.0 if slope is None else slope, np.float32)
        intercepts = np.full(len(values), 0.0 if intercept is None else intercept, np.float32)
    if mask is not None:
        values = values.astype(np.float32)
        _fill_padding(values, mask, slopes)
    return values, slopes, intercepts


def _grown(buffer: np.ndarray, elements: int, kept: int) -> np.ndarray:
    """`buffer` if it holds `elements` float32 values, else a larger one starting with its first `kept`."""
    if elements <= buffer.size:
        return buffer
    grown = np.empty(max(elements, 2 * buffer.size), np.float32)
    grown[:kept] = buffer[:kept]
    return grown


@dataclass
class FrameResizer:
    """Resizes frames of one shape; `results[key]` is (size, size) float32.

    A file's frames are converted to float32 into a reused scratch buffer and their rows resized at once,
    while they are in cache; the row-resized frames wait in a reused buffer until a batch of them has its
    columns resized. Fresh arrays per file (astype, then concatenate) cost two more passes over every frame
    and the page faults of memory not touched before, and a 16 MB batch of converted frames had left the
    cache before it was resized: more than the resize itself at 256 -> 64."""

    size: int
    results: dict[Hashable, np.ndarray] = field(default_factory=dict)
    _scratch: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # one chunk, converted
    _rows_resized: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # awaiting columns
    _shape: tuple[int, ...] = ()
    _keys: list[Hashable] = field(default_factory=list)
    _slopes: list[np.ndarray] = field(default_factory=list)
    _intercepts: list[np.ndarray] = field(default_factory=list)

    def add(self, keys: list[Hashable], values: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> None:
        """Frames of one file (stored values of any real dtype): rows resized now, columns in a batch."""
        if self._keys and self._shape != values.shape[1:]:
            self.flush()
        self._shape = values.shape[1:]
        step = max(1, SCRATCH_BYTES // (4 * values[0].size))
        for start in range(0, len(values), step):
            chunk = slice(start, start + step)
            self._resize_rows(values[chunk])
            self._keys.extend(keys[chunk])
            self._slopes.append(slopes[chunk])
            self._intercepts.append(intercepts[chunk])
            if len(self._keys) * self.size * self._shape[1] * 4 >= BATCH_BYTES:
                self.flush()

    def _resize_rows(self, frames: np.ndarray) -> None:
        """Rows of `frames` (stored values, any real dtype) resized into the buffer after the pending ones."""
        pending, (rows, cols) = len(self._keys), self._shape
        self._rows_resized = _grown(self._rows_resized, (pending + len(frames)) * self.size * cols,
                                    pending * self.size * cols)
        out = self._pending(pending + len(frames))[pending:]
        if rows == self.size:  # nothing to resize: convert straight into place
            np.copyto(out, frames, casting="unsafe")
            return
        self._scratch = _grown(self._scratch, frames.size, 0)
        converted = self._scratch[:frames.size].reshape(frames.shape)
        np.copyto(converted, frames, casting="unsafe")  # stored integers -> float32 in one pass
        resize_rows(converted, self.size, out)

    def _pending(self, frames: int) -> np.ndarray:
        """The first `frames` row-resized frames of the buffer, as (frames, size, cols)."""
        cols = self._shape[1]
        return self._rows_resized[:frames * self.size * cols].reshape(frames, self.size, cols)

    def flush(self) -> None:
        if not self._keys:
            return
        resized = resize_cols(self._pending(len(self._keys)), self.size)
        resized *= np.concatenate(self._slopes)[:, None, None]
        resized += np.concatenate(self._intercepts)[:, None, None]
        self.results.update(zip(self._keys, resized, strict=True))
        self._keys, self._slopes, self._intercepts = [], [], []

    def discard(self, keys: list[Hashable]) -> None:
        for key in keys:
            self.results.pop(key, None)
