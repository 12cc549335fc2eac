"""Image modality: HU windowing and normalisation, 2.5D channels with clamped edges, resizing."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from mmhealth.core.config import from_config
from mmhealth.tokenize.image import ImageParams, context_stack, encode_rows, fit_tokenizer, normalise_hu

SLICES_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()), ("slice_index", pa.int32()),
                           ("n_slices", pa.int32()), ("position_mm", pa.float64()), ("modality", pa.string()),
                           ("rows", pa.int32()), ("cols", pa.int32()), ("pixel_spacing_mm", pa.list_(pa.float64())),
                           ("slice_spacing_mm", pa.float64()), ("hu", pa.list_(pa.float32()))])


def series(subject_id: int, record_id: str, hu_per_slice: list[float], side: int, order=None) -> list[dict]:
    n = len(hu_per_slice)
    order = order or range(n)
    return [{"subject_id": subject_id, "record_id": record_id, "slice_index": i, "n_slices": n,
             "position_mm": 2.5 * i, "modality": "CT", "rows": side, "cols": side, "pixel_spacing_mm": [0.7, 0.7],
             "slice_spacing_mm": 2.5, "hu": [hu_per_slice[i]] * side * side} for i in order]


def slices_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SLICES_SCHEMA)


def test_window_normalisation():
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.float32)
    assert normalise_hu(hu, 40, 400).tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]
    assert normalise_hu(np.array([-60.0]), 40, 400).tolist() == [-0.5]


def test_context_channels_clamp_at_series_edges():
    slices = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    stacked = context_stack(slices, 1)
    assert stacked.shape == (4, 3, 2, 2)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert context_stack(slices, 0).shape == (4, 1, 2, 2)


def test_encode_rows_series_order_channels_and_resize(tmp_path):
    params = replace(from_config(ImageParams), size=4, context_slices=1)
    fit_tokenizer(pa.table({"x": [1]}), tmp_path, params)
    saved = json.loads((tmp_path / "preprocessor.json").read_text())
    assert saved["size"] == 4 and saved["channels"] == 3 and saved["window_center"] == 40.0
    # slices stored out of order; values chosen to land on -1, 0, 1 after windowing
    rows = series(1, "s" * 24, [-160.0, 40.0, 240.0], side=8, order=[2, 0, 1]) + series(2, "t" * 24, [40.0], side=4)
    table = encode_rows(slices_table(rows), tmp_path, params)
    assert table.schema.field("pixel_values").type == pa.list_(pa.float32())
    assert table.column("record_id").to_pylist() == ["s" * 24] * 3 + ["t" * 24]
    assert set(table.column("channels").to_pylist()) == {3}
    assert set(table.column("height").to_pylist()) == set(table.column("width").to_pylist()) == {4}
    pixels = [np.asarray(p, np.float32).reshape(3, 4, 4) for p in table.column("pixel_values").to_pylist()]
    assert [p[:, 0, 0].tolist() for p in pixels] == [[-1, -1, 0], [-1, 0, 1], [0, 1, 1], [0, 0, 0]]
    assert all(np.ptp(p, axis=(1, 2)).max() == 0 for p in pixels)  # constant slices stay constant when resized


def test_encode_rejects_other_params_and_broken_series(tmp_path):
    fit_tokenizer(pa.table({"x": [1]}), tmp_path, replace(from_config(ImageParams), size=4))
    rows = series(1, "s" * 24, [0.0, 0.0], side=4)
    with pytest.raises(ValueError, match="window_width"):
        encode_rows(slices_table(rows), tmp_path, replace(from_config(ImageParams), size=4, window_width=80))
    with pytest.raises(ValueError, match="slice_index"):
        encode_rows(slices_table(rows[:1] + rows[:1]), tmp_path, replace(from_config(ImageParams), size=4))
    empty = encode_rows(slices_table([]), tmp_path, replace(from_config(ImageParams), size=4))
    assert empty.num_rows == 0 and empty.schema.names[-3:] == ["channels", "height", "width"]
