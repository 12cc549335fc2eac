"""The classical baseline end to end: learning planted text, DNA, EHR and image signals, chosen on train only."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mmhealth.core.parquet_io import write_table
from mmhealth.core.special_tokens import CLS_ID, SEP_ID
from mmhealth.evaluate.baseline import run_baseline
from mmhealth.evaluate.baseline_bags import label_units
from mmhealth.evaluate.metrics import point_metrics
from mmhealth.evaluate.text_baseline import text_variants
from mmhealth.tokenize.dna import kmer_ids_batch
from mmhealth.tokenize.dna_kmers import KMER_CONFIG_FILE
from mmhealth.tokenize.image import PREPROCESSOR_FILE
from mmhealth.tokenize.text import TextParams, train_wordpiece

SHARDS = 2


def token_table(rows):
    """rows: (subject_id, record_id, input_ids)."""
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "record_id": pa.array([r[1] for r in rows], pa.string()),
                     "input_ids": pa.array([r[2] for r in rows], pa.list_(pa.int32()))})


def image_table(rows):
    """rows: (subject_id, record_id, pixel_values)."""
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "record_id": pa.array([r[1] for r in rows], pa.string()),
                     "pixel_values": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
                     "channels": pa.array([1] * len(rows), pa.int32()),
                     "height": pa.array([2] * len(rows), pa.int32()),
                     "width": pa.array([len(r[2]) // 2 for r in rows], pa.int32())})


def shard_map(root, modalities, splits=("train", "test")):
    """split -> modality -> the shard files write_shards wrote, as a job is handed them."""
    return {s: {m: [root / m / s / f"shard-{k}.parquet" for k in range(SHARDS)] for m in modalities} for s in splits}


def tokenizer_map(root, modalities):
    return {m: root / m / "tokenizer" for m in modalities}


def write_shards(root, modality, split, table):
    shard = pa.array(np.asarray(table.column("subject_id")) % SHARDS)
    for k in range(SHARDS):
        part = table.filter(pc.equal(shard, k))
        write_table(part, root / modality / split / f"shard-{k}.parquet", "tokenize")


FILLER = ["patient", "reports", "mild", "since", "yesterday", "denies", "cough", "fever", "history", "of",
          "asthma", "seen", "today", "no", "acute", "distress", "left", "right", "side", "worse"]


def auroc(predictions, positive):
    y = (predictions["label"] == positive).to_numpy(int)
    prob = np.array(predictions["probabilities"].tolist())
    classes = sorted(set(predictions["label"]) | set(predictions["predicted"]))
    return point_metrics(y, prob[:, [0, 1]] if classes.index(positive) == 1 else prob[:, ::-1])["auroc"]


def bigram_note(rng, positive):
    """Filler words with 'chest' and 'pain' in every note: adjacent ('chest pain') only when positive."""
    words = list(rng.choice(FILLER, 12))
    if positive:
        at = rng.integers(0, 12)
        words[at:at] = ["chest", "pain"]
    else:
        first, second = sorted(rng.choice(13, 2, replace=False))
        pair = ["chest", "pain"] if rng.random() < 0.5 else ["pain", "chest"]
        words.insert(second, pair[1])  # a filler word always lies between them
        words.insert(first, pair[0])
        if second == first + 1:
            words.insert(first + 1, "mild")
    return " ".join(words)


def text_task(root, rng, n_subjects=160, flip_test=False, shuffle_test=False):
    """Subject-level labels carried by a word bigram; two notes per subject, tokenised by a real WordPiece."""
    notes, labels = [], []
    for subject in range(1, n_subjects + 1):
        split = "train" if subject <= n_subjects * 3 // 4 else "test"
        positive = bool(rng.random() < 0.5)
        for note in range(2):
            text = bigram_note(rng, positive)
            if shuffle_test and split == "test":
                text = " ".join(rng.permutation(text.split()))
            notes.append((split, subject, f"n{subject}-{note}", text))
        label = "pos" if positive != (flip_test and split == "test") else "neg"
        labels.append({"subject_id": subject, "record_id": None, "label": label, "split": split})
    params = TextParams(vocab_size=200, min_frequency=1, max_length=64, stride=8, lowercase=True, tokenizer_path=None)
    tokenizer = train_wordpiece([n[3] for n in notes if n[0] == "train"], params)
    (root / "text" / "tokenizer").mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(root / "text" / "tokenizer" / "tokenizer.json"))
    for split in ("train", "test"):
        rows = [(s, r, [CLS_ID, *tokenizer.encode(t, add_special_tokens=False).ids, SEP_ID])
                for sp, s, r, t in notes if sp == split]
        write_shards(root, "text", split, token_table(rows))
    return pd.DataFrame(labels)


def test_text_baseline_learns_a_word_bigram(tmp_path):
    labels = text_task(tmp_path, np.random.default_rng(0))
    test = labels[labels["split"] == "test"]
    # A unit with no token rows gets no prediction, as with the model.
    no_rows = pd.DataFrame([{"subject_id": 777, "record_id": None, "label": "pos", "split": "test"}])
    result = run_baseline(pd.concat([labels, no_rows]), shard_map(tmp_path, ["text"]), tokenizer_map(tmp_path, ["text"]),
                          ["text"], ["neg", "pos"])
    assert result.predictions["subject_id"].tolist() == test["subject_id"].tolist()
    assert auroc(result.predictions, "pos") >= 0.95
    assert result.description.startswith("TF-IDF word 1-2-grams") and "CV on train" in result.description
    assert result.settings["model"] == "logistic_regression" and result.settings["params"]["C"] > 0


def test_selection_never_sees_test_rows(tmp_path):
    # Same train split; the test split's notes shuffled and its labels flipped: every choice stays the same.
    results = []
    for variant, kwargs in enumerate([{}, {"flip_test": True, "shuffle_test": True}]):
        root = tmp_path / str(variant)
        labels = text_task(root, np.random.default_rng(3), n_subjects=80, **kwargs)
        labels = pd.concat([labels, pd.DataFrame([{"subject_id": 999, "record_id": None, "label": "pos",
                                                    "split": "val"}])])
        results.append(run_baseline(labels, shard_map(root, ["text"]), tokenizer_map(root, ["text"]), ["text"],
                                    ["neg", "pos"], seed=0))
    assert results[0].settings == results[1].settings and results[0].description == results[1].description
    assert 999 not in results[0].predictions["subject_id"].tolist()  # val rows are neither fitted nor predicted


def test_baseline_is_fitted_on_train_only(tmp_path):
    # Test labels are the opposite of what their features say: a model that saw them could not score ~0.
    labels = text_task(tmp_path, np.random.default_rng(1), flip_test=True)
    result = run_baseline(labels, shard_map(tmp_path, ["text"]), tokenizer_map(tmp_path, ["text"]), ["text"],
                          ["neg", "pos"])
    assert auroc(result.predictions, "pos") < 0.1


def random_dna(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def test_dna_baseline_learns_a_5mer_motif_per_record(tmp_path):
    rng = np.random.default_rng(4)
    motif, windows, labels = "GATCA", [], []
    for subject in range(1, 61):
        split = "train" if subject <= 40 else "test"
        for record in range(2):  # record-level labels: a record's windows are its bag, as for the model
            positive = bool(rng.random() < 0.5)
            record_id = f"r{subject}-{record}"
            for _ in range(3):
                sequence = random_dna(rng, 120)
                if positive:
                    at = rng.integers(0, 115)
                    sequence = sequence[:at] + motif + sequence[at + 5:]
                windows.append((split, subject, record_id, sequence))
            labels.append({"subject_id": subject, "record_id": record_id, "split": split,
                           "label": "carrier" if positive else "none"})
    for split in ("train", "test"):
        chosen = [w for w in windows if w[0] == split]
        ids = kmer_ids_batch([w[3] for w in chosen], k=6, stride=1, max_length=256)
        write_shards(tmp_path, "dna", split, token_table([(w[1], w[2], list(i))
                                                           for w, i in zip(chosen, ids.to_pylist(), strict=True)]))
    (tmp_path / "dna" / "tokenizer").mkdir()
    (tmp_path / "dna" / "tokenizer" / KMER_CONFIG_FILE).write_text(json.dumps({"k": 6, "stride": 1, "max_length": 256}))
    result = run_baseline(pd.DataFrame(labels), shard_map(tmp_path, ["dna"]), tokenizer_map(tmp_path, ["dna"]),
                          ["dna"], ["carrier", "none"])
    assert len(result.predictions) == 40 and result.predictions["record_id"].str.startswith("r").all()
    assert auroc(result.predictions, "carrier") >= 0.95
    assert result.settings["features"]["dna"]["k"] in (3, 4, 5, 6) and "-mer counts" in result.description


def write_ehr_parts(path, rows):
    """rows: (subject_id, time or None, code, numeric_value or None, text_value or None)."""
    table = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                      "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                      "code": pa.array([r[2] for r in rows], pa.string()),
                      "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
                      "text_value": pa.array([r[4] for r in rows], pa.string())})
    pq.write_table(table, path)
    return [path]


def test_ehr_and_image_fuse_per_subject(tmp_path):
    rng = np.random.default_rng(5)
    events, slices, labels = [], [], []
    for subject in range(1, 101):
        split = "train" if subject <= 70 else "test"
        sick = bool(rng.random() < 0.5)
        birth = pd.Timestamp("1950-01-01") + pd.Timedelta(days=int(rng.integers(0, 10000)))
        events += [(subject, birth.to_pydatetime(), "MEDS_BIRTH", None, None),
                   (subject, None, "SEX//F" if rng.random() < 0.5 else "SEX//M", None, None),
                   (subject, pd.Timestamp("2020-01-01").to_pydatetime(), "NOTE", None, "not a code")]
        for visit in range(2):  # the last value of LAB//X carries the label
            value = rng.normal(8.0 if sick and visit == 1 else 5.0, 0.5)
            events.append((subject, pd.Timestamp(f"202{visit}-06-01").to_pydatetime(), "LAB//X", value, None))
        for _ in range(2):
            pixels = rng.uniform(-1, 1, (3, 4, 4)).astype(np.float32).ravel().tolist()
            slices.append((split, (subject, f"s{subject}", pixels)))
        labels.append({"subject_id": subject, "record_id": None, "split": split, "label": "sick" if sick else "well"})
    parts = write_ehr_parts(tmp_path / "part-0.parquet", events)
    for split in ("train", "test"):
        table = image_table([r for s, r in slices if s == split])
        table = table.set_column(3, "channels", pa.array([3] * len(table), pa.int32()))
        table = table.set_column(4, "height", pa.array([4] * len(table), pa.int32()))
        table = table.set_column(5, "width", pa.array([4] * len(table), pa.int32()))
        write_shards(tmp_path, "image", split, table)
    (tmp_path / "image" / "tokenizer").mkdir()
    (tmp_path / "image" / "tokenizer" / PREPROCESSOR_FILE).write_text(json.dumps({"window_center": 40, "window_width": 400}))
    result = run_baseline(pd.DataFrame(labels), shard_map(tmp_path, ["image", "ehr"]),
                          tokenizer_map(tmp_path, ["image", "ehr"]), ["image", "ehr"], ["sick", "well"],
                          ehr_parts=parts)
    assert len(result.predictions) == 30
    assert auroc(result.predictions, "sick") > 0.9
    assert set(result.settings["features"]) == {"image", "ehr"} and " + " in result.description
    assert result.settings["features"]["ehr"]["codes"] == 3  # LAB//X and the two SEX// codes; NOTE is text


def test_single_class_train_predicts_it(tmp_path):
    labels = text_task(tmp_path, np.random.default_rng(6), n_subjects=40)
    labels.loc[labels["split"] == "train", "label"] = "neg"
    result = run_baseline(labels, shard_map(tmp_path, ["text"]), tokenizer_map(tmp_path, ["text"]), ["text"],
                          ["neg", "pos"])
    assert result.name == "constant_majority_class"
    assert (np.array(result.predictions["probabilities"].tolist()) == [1.0, 0.0]).all()
    with pytest.raises(ValueError, match="subset"):
        run_baseline(labels, {}, {}, ["audio"], ["neg", "pos"])


def test_text_char_ngrams_are_an_option(tmp_path):
    labels = text_task(tmp_path, np.random.default_rng(7), n_subjects=40)
    units = {split: label_units(labels[labels["split"] == split]) for split in ("train", "test")}
    paths = {split: shard_map(tmp_path, ["text"])[split]["text"] for split in units}
    words, has_rows = text_variants(paths, units, tmp_path / "text" / "tokenizer")
    both, _ = text_variants(paths, units, tmp_path / "text" / "tokenizer", char_ngrams=True)
    assert [v.name for v in words] == ["tfidf_word_1_2grams"] and len(both) == 2
    assert both[1].train.shape[1] > words[0].train.shape[1] == words[0].test.shape[1]
    assert has_rows["train"].all() and len(has_rows["test"]) == 10
