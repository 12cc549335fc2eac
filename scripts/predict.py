"""Predict with a saved task folder on token shards: the test split in evaluation, or new data.

New data (config `predict`, workflow target `predict`) is ingested with the same pseudonym key and
tokenised with the training run's tokenizers into a split named `all`. Without labels every unit found in
the shards is predicted: each subject, or each record (series, FASTA record) when the task was trained on
record-level labels.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bags import BagData, ModalityRows, build_bags, load_modality_rows, read_labels
from models import FusionClassifier, load_classifier
from parquet_io import write_table
from pseudonym import RECORD_MODALITIES
from train import inference_rows, pick_device, predict_proba

log = logging.getLogger("predict")


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


def load_units(model: FusionClassifier, tokens_root: str | Path, split: str,
               labels_path: str | None) -> tuple[BagData, pa.Table]:
    rows = {m: load_modality_rows(tokens_root, m, split) for m in model.spec.modalities}
    units = unit_table(labels_path, split, rows, model.spec.record_level)
    classes = model.spec.classes
    # Unlabelled units get class 0 as a placeholder; their `label` column stays null in the output.
    labelled = units.column("label").null_count == 0
    table = units if labelled else units.set_column(
        units.schema.get_field_index("label"), "label", pa.array([classes[0]] * units.num_rows))
    data, dropped = build_bags(table, classes, rows)
    if dropped:
        log.warning("%d %s units have no rows in %s and get no prediction", dropped, split, model.spec.modalities)
    return data, units


def predictions_frame(model: FusionClassifier, data: BagData, labelled: bool, batch_size: int = 32) -> pd.DataFrame:
    prob = predict_proba(model, data, batch_size, inference_rows(model), pick_device())
    classes = np.asarray(model.spec.classes, dtype=object)
    return pd.DataFrame({
        "subject_id": data.subject_id.astype(np.int64),
        "record_id": data.record_id,
        "label": classes[data.labels] if labelled else None,
        "predicted": classes[prob.argmax(axis=1)] if len(prob) else [],
        "probabilities": list(prob.astype(np.float32)),
    })


def with_training_split(frame: pd.DataFrame, subjects_path: str | Path) -> pd.DataFrame:
    """Add `training_split`: the split a subject had in the training run (null for a new subject), so an
    in-sample prediction for a patient the model was trained on is never mistaken for a fresh one."""
    known = pq.read_table(subjects_path, columns=["subject_id", "split"]).to_pandas()
    split = frame["subject_id"].map(known.set_index("subject_id")["split"])
    return frame.assign(training_split=split.astype(object).where(split.notna(), None))


def write_predictions(frame: pd.DataFrame, path: str | Path, params: dict) -> None:
    schema = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()), ("label", pa.string()),
                        ("predicted", pa.string()), ("probabilities", pa.list_(pa.float32()))])
    if "training_split" in frame:
        schema = schema.append(pa.field("training_split", pa.string()))
    write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path, "predict", params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--tokens-root", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--labels", help="labels parquet from the split stage; omit for unlabelled new data")
    parser.add_argument("--training-subjects", help="splits/subjects.parquet of the training run: adds the "
                        "column training_split (new data only)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    model = load_classifier(args.model_dir).to(pick_device())
    data, _ = load_units(model, args.tokens_root, args.split, args.labels)
    frame = predictions_frame(model, data, labelled=args.labels is not None)
    if args.training_subjects:
        frame = with_training_split(frame, args.training_subjects)
    write_predictions(frame, args.out, {"model": str(args.model_dir), "split": args.split,
                                        "classes": model.spec.classes})
    log.info("%d predictions written to %s", len(frame), args.out)


if __name__ == "__main__":
    main()
