"""Predict a trained task on a batch of new data (config `predict`, workflow target `predict`).

The batch was ingested with the same pseudonym key and tokenised with the training run's tokenizers into
one split named `all`. Every unit found is predicted, and each prediction says whether its subject was
already in the training run, so an in-sample prediction is never mistaken for a fresh one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mmhealth.evaluate.calibration import apply_temperature, saved_temperature
from mmhealth.predict.inference import load_units, predictions_frame, write_predictions
from mmhealth.train.device import pick_device
from mmhealth.train.models import load_classifier

log = logging.getLogger("predict")
ALL_ROWS = "all"  # the one "split" of new data (tokenize writes it)


def with_training_split(frame: pd.DataFrame, subjects_path: str | Path) -> pd.DataFrame:
    """Add `training_split`: the split a subject had in the training run (null for a new subject)."""
    known = pq.read_table(subjects_path, columns=["subject_id", "split"]).to_pandas()
    split = frame["subject_id"].map(known.set_index("subject_id")["split"])
    return frame.assign(training_split=split.astype(object).where(split.notna(), None))


def with_calibrated(frame: pd.DataFrame, model_dir: Path) -> pd.DataFrame:
    """Add `probabilities_calibrated`: the raw probabilities after the temperature saved with the model (the
    same T evaluation applied); equal to the raw ones for a model folder saved without a temperature."""
    saved = saved_temperature(model_dir)
    if saved is None or frame.empty:
        return frame.assign(probabilities_calibrated=frame["probabilities"])
    calibrated = apply_temperature(np.stack(frame["probabilities"].to_numpy()), saved[0]).astype(np.float32)
    return frame.assign(probabilities_calibrated=list(calibrated))


def predict_new_data(model_dir: Path, shards: dict[str, list[Path]], training_subjects: Path, out: Path) -> int:
    """Predict every unit of the batch's token shards (modality -> files); returns how many."""
    model = load_classifier(model_dir).to(pick_device())
    data, _ = load_units(model, shards, ALL_ROWS, None)
    frame = with_calibrated(predictions_frame(model, data, labelled=False), model_dir)
    frame = with_training_split(frame, training_subjects)
    saved = saved_temperature(model_dir)
    write_predictions(frame, out, {"model": str(model_dir), "split": ALL_ROWS, "classes": model.spec.classes,
                                   "temperature": saved[0] if saved else None})
    log.info("%d predictions written to %s", len(frame), out)
    return len(frame)
