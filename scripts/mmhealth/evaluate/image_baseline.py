"""Image baseline features per bag of slices (a series, or every slice of a subject): HU histogram, first-order
statistics and simple texture, averaged and max-pooled over the bag's slices (at most 64, evenly spaced).

Pixel values are the tokenizer's windowed, normalised slices (`tokenize/image.py`), so Hounsfield units are
recovered only inside its window [center - width/2, center + width/2] (`preprocessor.json`): values beyond it
were clipped and count as the window's edges. Only the middle channel (the slice itself) is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter
from sklearn.preprocessing import StandardScaler

from mmhealth.core.parquet_io import read_tables
from mmhealth.evaluate.baseline_bags import Unit, list_parts, row_unit_pairs
from mmhealth.evaluate.baseline_select import Variant
from mmhealth.tokenize.image import PREPROCESSOR_FILE
from mmhealth.train.bags import pick_rows

HU_BINS = 16
PERCENTILES = (5, 25, 50, 75, 95)
SLICE_FEATURES = (
    [f"hu_bin{i}" for i in range(HU_BINS)] + ["at_window_low", "at_window_high", "mean", "std", "skewness",
                                               "excess_kurtosis"] + [f"p{p}" for p in PERCENTILES]
    + ["gradient_mean", "gradient_std", "local_variance_mean", "local_variance_std"])
CHUNK = 512  # slices per vectorised batch
# Slices per bag the features are computed on, evenly spaced beyond it: what the model sees of a bag when it
# predicts (mmhealth.predict.inference.INFERENCE_ROWS_PER_BAG); a long series costs no more than 64 slices.
MAX_SLICES_PER_BAG = 64


def hu_window(tokenizer_dir: Path) -> tuple[float, float]:
    """(low, high) HU of the window the pixel values were normalised with."""
    config = json.loads((Path(tokenizer_dir) / PREPROCESSOR_FILE).read_text())
    center, width = float(config["window_center"]), float(config["window_width"])
    return center - width / 2, center + width / 2


def to_hu(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Normalised pixel values in [-1, 1] back to HU in [low, high]."""
    return (low + (np.asarray(pixels, np.float32) + 1.0) / 2.0 * (high - low)).astype(np.float32)


def slice_features(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """(n, len(SLICE_FEATURES)) features of n slices (n, H, W) in HU; see SLICE_FEATURES for the columns."""
    n = len(hu)
    flat = hu.reshape(n, -1)
    size = flat.shape[1]
    # equal width; clipped in floating point before the cast (the same bins as casting first, at half the cost)
    bins = np.minimum(np.maximum(flat - low, 0) * (HU_BINS / (high - low)), HU_BINS - 1).astype(np.int32)
    hist = np.bincount((bins + (HU_BINS * np.arange(n, dtype=np.int32))[:, None]).ravel(), minlength=n * HU_BINS)
    hist = hist.reshape(n, HU_BINS) / size
    tolerance = 1e-6 * (high - low)
    clipped = np.column_stack([(flat <= low + tolerance).mean(1), (flat >= high - tolerance).mean(1)])
    mean, std = flat.mean(1), flat.std(1)
    z = (flat - mean[:, None]) / np.where(std > 0, std, 1.0)[:, None]
    z2 = z * z  # products, not powers: numpy's float pow is several times slower
    shape = np.column_stack([(z2 * z).mean(1), np.where(std > 0, (z2 * z2).mean(1) - 3.0, 0.0)])
    percentiles = sorted_percentiles(np.sort(flat, axis=1), PERCENTILES)
    gradient = np.zeros_like(flat)
    if hu.shape[1] > 1 and hu.shape[2] > 1:
        gy, gx = np.gradient(hu, axis=(1, 2))
        gradient = np.sqrt(gx * gx + gy * gy).reshape(n, -1)  # np.hypot is 2-3 times slower
    local_mean = uniform_filter(hu, size=(1, 3, 3), mode="reflect")
    local_var = np.maximum(uniform_filter(hu * hu, size=(1, 3, 3), mode="reflect") - local_mean**2, 0.0).reshape(n, -1)
    texture = np.column_stack([gradient.mean(1), gradient.std(1), local_var.mean(1), local_var.std(1)])
    return np.column_stack([hist, clipped, mean, std, shape, percentiles, texture])


def sorted_percentiles(ordered: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """(n, len(q)) percentiles of each row of a row-sorted (n, m) array, interpolated linearly as numpy's
    default does (a sort and a gather: several times faster than np.percentile's partitions per row)."""
    position = np.asarray(q, np.float64) / 100.0 * (ordered.shape[1] - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, ordered.shape[1] - 1)
    fraction = position - below
    low, high = ordered[:, below].astype(np.float64), ordered[:, above].astype(np.float64)
    return low + (high - low) * fraction


def row_slice_features(table, low: float, high: float, rows: np.ndarray | None = None) -> np.ndarray:
    """Per token row in `rows` (default: every row), the features of its middle channel (rows may differ in
    shape)."""
    values, offsets = list_parts(table.column("pixel_values"))
    rows = np.arange(table.num_rows) if rows is None else np.asarray(rows, np.int64)
    shapes = np.column_stack([table.column(c).to_numpy() for c in ("channels", "height", "width")])[rows]
    out = np.zeros((len(rows), len(SLICE_FEATURES)))
    for shape in np.unique(shapes, axis=0):
        channels, height, width = (int(v) for v in shape)
        at = np.flatnonzero((shapes == shape).all(axis=1))
        for start in range(0, len(at), CHUNK):
            chunk = at[start:start + CHUNK]
            middle = offsets[rows[chunk]] + (channels // 2) * height * width
            pixels = sliding_window_view(values, height * width)[middle]  # each row's slice, no index array
            out[chunk] = slice_features(to_hu(pixels, low, high).reshape(-1, height, width), low, high)
    return out


def bag_slices(rows: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(units present, per unit the rows its features are computed on, per unit its number of rows): a bag's
    rows in shard order, at most MAX_SLICES_PER_BAG of them evenly spaced, as the model sees a bag at
    inference (`mmhealth.train.bags.pick_rows`)."""
    order = np.lexsort((rows, owner))
    present, starts, sizes = np.unique(owner[order], return_index=True, return_counts=True)
    picked = [pick_rows(bag, MAX_SLICES_PER_BAG, None) for bag in np.split(rows[order], starts[1:])]
    return present, picked, sizes


def bag_image_features(paths: Sequence[Path], units: Sequence[Unit], low: float,
                       high: float) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: [mean over slices, max over slices, log(1 + slices in the bag)], over at most
    MAX_SLICES_PER_BAG evenly spaced slices; zeros and False for a unit without rows."""
    width = 2 * len(SLICE_FEATURES) + 1
    out, has_rows = np.zeros((len(units), width)), np.zeros(len(units), bool)
    for path in paths:
        table = read_tables([path], ["subject_id", "record_id", "pixel_values", "channels", "height", "width"])
        rows, owner = row_unit_pairs(table, units, "image")
        if not len(rows):
            continue
        present, picked, sizes = bag_slices(rows, owner)
        needed = np.unique(np.concatenate(picked))
        per_slice = row_slice_features(table, low, high, needed)  # only the slices some bag uses
        for unit, unit_rows, size in zip(present, picked, sizes, strict=True):
            # A subject lives in one shard, so a unit's bag is whole here.
            features = per_slice[np.searchsorted(needed, unit_rows)]
            out[unit] = np.concatenate([features.mean(0), features.max(0), [np.log1p(size)]])
            has_rows[unit] = True
    return out, has_rows


def image_variants(paths: dict[str, Sequence[Path]], units: dict[str, Sequence[Unit]],
                   tokenizer_dir: Path) -> tuple[list[Variant], dict[str, np.ndarray]]:
    """The HU histogram / statistics / texture variant and, per split, the units that have slices."""
    low, high = hu_window(tokenizer_dir)
    built = {split: bag_image_features(paths[split], units[split], low, high) for split in ("train", "test")}
    variant = Variant("image", "image_hu_histogram_stats_texture",
                      f"HU histogram ({HU_BINS} bins over [{low:g}, {high:g}] HU), first-order statistics "
                      "and texture (gradient magnitude, local variance), mean- and max-pooled over slices "
                      f"(at most {MAX_SLICES_PER_BAG} per bag, evenly spaced)",
                      {"features": "HU histogram, first-order statistics, gradient magnitude, 3x3 local variance; "
                                   "mean and max over slices", "hu_window": [low, high], "hu_bins": HU_BINS,
                       "max_slices_per_bag": MAX_SLICES_PER_BAG},
                      built["train"][0], built["test"][0], StandardScaler, dense=True)
    return [variant], {split: built[split][1] for split in built}
