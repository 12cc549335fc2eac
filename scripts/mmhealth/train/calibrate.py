"""The temperature saved with a model: fitted on the validation split as the last step of fine-tuning, so
evaluation and prediction on new data apply the same T (evaluation reports it, it never refits it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmhealth.evaluate.calibration import CALIBRATION_FILE, apply_temperature, fit_temperature, nll
from mmhealth.evaluate.metrics import prediction_arrays
from mmhealth.predict.inference import predictions_frame
from mmhealth.train.bags import Units
from mmhealth.train.models import load_classifier

log = logging.getLogger("train")


def save_calibration(model_dir: Path, val: Units) -> dict:
    """Fit T on the validation units with the saved model (as inference computes them) and write
    `calibration.json` into the model folder; returns what it wrote."""
    model = load_classifier(model_dir)
    y, prob, _ = prediction_arrays(predictions_frame(model, val, labelled=True), model.spec.classes)
    temperature, note = fit_temperature(y, prob)
    record = {"method": "temperature_scaling", "fitted_on": "val", "temperature": temperature, "note": note,
              "n_val": len(y), "val_nll": {"before": nll(y, prob), "after": nll(y, apply_temperature(prob, temperature))}}
    (Path(model_dir) / CALIBRATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("temperature %.3f fitted on %d validation units (NLL %.4f -> %.4f)%s", temperature, len(y),
             record["val_nll"]["before"], record["val_nll"]["after"], f": {note}" if note else "")
    return record
