"""Inference with a saved task folder: class probabilities for the units of given token shards.

Shared by evaluation (the labelled test split) and prediction on new data (no labels: every subject, or
every record when the task was trained on record-level labels). Training validates through it too, so the
numbers a model is selected on are computed as they are at inference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from mmhealth.core.modalities import RECORD_MODALITIES
from mmhealth.core.parquet_io import write_table
from mmhealth.train.bags import ModalityRows, Units, build_units, read_labels, read_row_ids
from mmhealth.train.device import autocast, pick_device, to_device
from mmhealth.train.models import FusionClassifier
from mmhealth.train.stream import BagStream, loader

log = logging.getLogger("predict")
INFERENCE_ROWS_PER_BAG = 64  # a bag's rows seen when predicting (evenly spaced beyond this)

LOADER_WORKERS = 0  # inference reads in the job's own process (evaluation jobs get few cores)


@torch.no_grad()
def predict_proba(model: FusionClassifier, data: Units, batch_size: int, rows_per_bag: int,
                  device: torch.device) -> np.ndarray:
    """Class probabilities per unit (in the order of `data`), with evenly spaced rows when a bag is larger
    than rows_per_bag; bags are streamed from the shards (`train.stream`)."""
    model.eval()
    prob = np.zeros((len(data), len(model.spec.classes)), np.float32)
    stream = BagStream(data, batch_size, rows_per_bag, train=False, workers=max(1, LOADER_WORKERS))
    for batch in loader(stream, LOADER_WORKERS, device):
        with autocast(device):
            logits = model(to_device(batch, device), batch["units"])
        prob[batch["unit"].numpy()] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return prob


def inference_rows(model: FusionClassifier) -> int:
    """Rows per bag when predicting: every row up to INFERENCE_ROWS_PER_BAG, at least as many as in training."""
    return max(INFERENCE_ROWS_PER_BAG, model.spec.max_rows_per_bag)


def unit_table(labels_path: str | None, split: str, rows: dict[str, ModalityRows], record_level: bool) -> pa.Table:
    """Labelled units of the split; without labels one unit per subject present in the shards, or per record
    of the record modalities (image series, FASTA records) for a task trained on record-level labels."""
    if labels_path:
        return read_labels(labels_path, split)
    with_records = [r for m, r in rows.items() if m in RECORD_MODALITIES] if record_level else []
    if with_records:
        pairs = pd.DataFrame({"subject_id": np.concatenate([r.subject_id for r in with_records]),
                              "record_id": np.concatenate([r.record_id for r in with_records])})
        units = pairs.drop_duplicates().sort_values(["subject_id", "record_id"])
        subjects, records = units["subject_id"].to_numpy(), pa.array(units["record_id"].tolist(), pa.string())
    else:
        subjects = np.unique(np.concatenate([r.subject_id for r in rows.values()]))
        records = pa.nulls(len(subjects), pa.string())
    return pa.table({"subject_id": pa.array(subjects, pa.int64()), "record_id": records,
                     "label": pa.nulls(len(subjects), pa.string())})


def load_units(model: FusionClassifier, shards: dict[str, list[Path]], split: str,
               labels_path: str | None) -> tuple[Units, pa.Table]:
    """The units of `split` with where their bags are in `shards` (modality -> token shard files of that
    split): ids only, the rows are streamed when predicting."""
    rows = {m: read_row_ids(shards[m], m) for m in model.spec.modalities}
    units = unit_table(labels_path, split, rows, model.spec.record_level)
    classes = model.spec.classes
    # Unlabelled units get class 0 as a placeholder; their `label` column stays null in the output.
    labelled = units.column("label").null_count == 0
    table = units if labelled else units.set_column(
        units.schema.get_field_index("label"), "label", pa.array([classes[0]] * units.num_rows))
    data, dropped = build_units(table, classes, rows, {m: shards[m] for m in model.spec.modalities})
    if dropped:
        log.warning("%d %s units have no rows in %s and get no prediction", dropped, split, model.spec.modalities)
    return data, units


def predictions_frame(model: FusionClassifier, data: Units, labelled: bool, batch_size: int = 32) -> pd.DataFrame:
    prob = predict_proba(model, data, batch_size, inference_rows(model), pick_device())
    classes = np.asarray(model.spec.classes, dtype=object)
    return pd.DataFrame({
        "subject_id": data.subject_id.astype(np.int64),
        "record_id": data.record_id,
        "label": classes[data.labels] if labelled else None,
        "predicted": classes[prob.argmax(axis=1)] if len(prob) else [],
        "probabilities": list(prob.astype(np.float32)),
    })


def write_predictions(frame: pd.DataFrame, path: str | Path, params: dict) -> None:
    schema = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()), ("label", pa.string()),
                        ("predicted", pa.string()), ("probabilities", pa.list_(pa.float32()))])
    if "probabilities_calibrated" in frame:  # evaluation: after the validation-fitted temperature
        schema = schema.append(pa.field("probabilities_calibrated", pa.list_(pa.float32())))
    if "training_split" in frame:
        schema = schema.append(pa.field("training_split", pa.string()))
    write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path, "predict", params)
