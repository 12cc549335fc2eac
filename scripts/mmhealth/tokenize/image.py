"""Image slices (Hounsfield units) to normalised 2.5D pixel tensors, one per slice.

Each slice is windowed (center/width), scaled to [0, 1], then normalised to [-1, 1]; its channels are the
2*context_slices+1 neighbouring slices of the same series (clamped at the series edges), so a 2D model sees
some depth. There is nothing to learn: "fitting" writes `preprocessor.json` with the parameters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

log = logging.getLogger("tokenize_image")

PREPROCESSOR_FILE = "preprocessor.json"
IMAGE_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()),
                          ("pixel_values", pa.list_(pa.float32())), ("channels", pa.int32()),
                          ("height", pa.int32()), ("width", pa.int32())])


@dataclass(frozen=True)
class ImageParams:
    """Config `tokenize.image` (defaults and bounds: the config schema)."""

    SECTION: ClassVar[str] = "tokenize.image"
    window_center: float  # HU at the middle of the display window (soft tissue)
    window_width: float  # HU range mapped onto [0, 1]
    size: int  # output height and width; slices of another size are resized bilinearly
    context_slices: int  # neighbours on each side stacked as channels

    @property
    def channels(self) -> int:
        return 2 * self.context_slices + 1


MODALITY = "image"
PARAMS = ImageParams


def modality_rows(table: pa.Table) -> pa.Table:
    """Every slice row is a model input."""
    return table


def preprocessor_config(params: ImageParams) -> dict[str, object]:
    """What preprocessor.json holds: the parameters and the formula, enough to preprocess new slices."""
    return {"processor": "mmhealth-ct-window-2.5d", **dataclasses.asdict(params), "channels": params.channels,
            "normalisation": "clip((hu - (window_center - window_width / 2)) / window_width, 0, 1), "
                             "then (x - 0.5) / 0.5; channels = slices i-context..i+context, edges clamped",
            "image_mean": 0.5, "image_std": 0.5}


def fit_tokenizer(train_rows: pa.Table, out_dir: str | os.PathLike, params: ImageParams) -> None:
    """Write preprocessor.json (nothing is learned from `train_rows`)."""
    path = Path(out_dir) / PREPROCESSOR_FILE
    path.write_text(json.dumps(preprocessor_config(params), indent=1, sort_keys=True) + "\n")
    log.info("wrote %s for %d train slices", path, train_rows.num_rows)


def normalise_hu(hu: np.ndarray, window_center: float, window_width: float) -> np.ndarray:
    """clip((hu - (c - w/2)) / w, 0, 1) mapped to [-1, 1], float32."""
    scaled = np.clip((hu.astype(np.float32) - (window_center - window_width / 2)) / window_width, 0.0, 1.0)
    return ((scaled - 0.5) / 0.5).astype(np.float32)


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W) to (n, size, size) by bilinear interpolation; returned as is when already that size."""
    if slices.shape[1:] == (size, size):
        return slices
    import torch  # only when resizing: the import costs a second or two

    tensor = torch.from_numpy(np.ascontiguousarray(slices))[:, None]
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


def context_stack(slices: np.ndarray, context_slices: int) -> np.ndarray:
    """(n, H, W) to (n, 2*context+1, H, W): slice i's channels are slices i-context..i+context, clamped."""
    n = slices.shape[0]
    neighbours = np.clip(np.arange(n)[:, None] + np.arange(-context_slices, context_slices + 1)[None, :], 0, n - 1)
    return slices[neighbours]


def series_pixels(series: pa.Table, params: ImageParams) -> np.ndarray:
    """One series' slices (sorted by slice_index) as (n, channels, size, size) float32 pixel values."""
    record_id = series.column("record_id")[0].as_py()
    heights = pc.unique(series.column("rows")).to_pylist()
    widths = pc.unique(series.column("cols")).to_pylist()
    if len(heights) != 1 or len(widths) != 1:
        raise ValueError(f"image series {record_id}: slices differ in size ({heights} x {widths})")
    height, width = heights[0], widths[0]
    lengths = pc.list_value_length(series.column("hu")).to_numpy(zero_copy_only=False)
    if (lengths != height * width).any():
        raise ValueError(f"image series {record_id}: hu length differs from rows*cols = {height * width}")
    indices = series.column("slice_index").to_numpy()
    if not np.array_equal(np.sort(indices), np.arange(len(indices))):
        raise ValueError(f"image series {record_id}: slice_index is not 0..{len(indices) - 1} (missing or repeated)")
    hu = pc.list_flatten(series.column("hu")).to_numpy().reshape(len(indices), height, width)
    slices = normalise_hu(hu, params.window_center, params.window_width)
    return context_stack(resize_slices(slices, params.size), params.context_slices)


def check_preprocessor(tokenizer_dir: str | os.PathLike, params: ImageParams) -> None:
    """Refuse to encode with parameters other than those written by fit_tokenizer."""
    saved = json.loads((Path(tokenizer_dir) / PREPROCESSOR_FILE).read_text())
    for key, value in dataclasses.asdict(params).items():
        if saved.get(key) != value:
            raise ValueError(f"{tokenizer_dir}/{PREPROCESSOR_FILE}: {key}={saved.get(key)!r}, "
                             f"asked for {value!r}; refit the preprocessor")


def encode_rows(rows: pa.Table, tokenizer_dir: str | os.PathLike, params: ImageParams) -> pa.Table:
    """One row per slice (series order, then slice order): normalised 2.5D pixel_values and their shape."""
    check_preprocessor(tokenizer_dir, params)
    rows = rows.take(pc.sort_indices(rows, sort_keys=[("record_id", "ascending"), ("slice_index", "ascending")]))
    record_ids = rows.column("record_id").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, record_ids[1:] != record_ids[:-1]])[:len(record_ids)]
    ends = np.r_[starts[1:], len(record_ids)][:len(starts)].astype(int)
    pixels = []  # one ListArray per series: int32 list offsets never overflow on a big part
    for start, end in tqdm(zip(starts, ends, strict=True), total=len(starts), desc="image series",
                           mininterval=10, leave=False):
        series = rows.slice(start, end - start)
        if pc.count_distinct(series.column("subject_id")).as_py() != 1:
            raise ValueError(f"image series {record_ids[start]}: slices belong to more than one subject")
        pixels.append(pixel_lists(series_pixels(series, params)))
    n = rows.num_rows
    log.info("encoded %d slices of %d series into %d x %d x %d tensors", n, len(starts), params.channels,
             params.size, params.size)
    shape = [pa.array(np.full(n, value, np.int32)) for value in (params.channels, params.size, params.size)]
    return pa.Table.from_arrays([rows.column("subject_id"), rows.column("record_id"),
                                 pa.chunked_array(pixels, pa.list_(pa.float32())), *shape], schema=IMAGE_SCHEMA)


def pixel_lists(pixels: np.ndarray) -> pa.ListArray:
    """(n, ...) float32 array as n flat list<float32> rows."""
    per_row = int(np.prod(pixels.shape[1:]))
    offsets = pa.array(np.arange(len(pixels) + 1, dtype=np.int32) * per_row, pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(pixels.reshape(-1), pa.float32()))
