"""tokenize_modality.py (fit, encode) end to end on tiny ingest parts of every modality."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tokenize_modality
from conftest import FRACTIONS, ids_in_split
from mmhealth.core.parquet_io import read_metadata
from mmhealth.core.special_tokens import CLS_ID
from mmhealth.split.assignment import state_text
from mmhealth.split.subject_split import split_of
from mmhealth.tokenize import dna
from mmhealth.tokenize.common import encode_shard, tokenizer_sha256

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TRAIN_A, TRAIN_B = ids_in_split("train", 2)
VAL_A, TEST_A = ids_in_split("val", 1)[0], ids_in_split("test", 1)[0]
SPLIT_OF = {TRAIN_A: "train", TRAIN_B: "train", VAL_A: "val", TEST_A: "test"}
T0 = dt.datetime(2022, 5, 1, 9, 30)
EVENTS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                           ("numeric_value", pa.float32()), ("text_value", pa.string())])
DNA_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()), ("window_index", pa.int32()),
                        ("offset", pa.int64()), ("sequence", pa.string()), ("n_fraction", pa.float32())])
IMAGE_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()), ("slice_index", pa.int32()),
                          ("n_slices", pa.int32()), ("position_mm", pa.float64()), ("modality", pa.string()),
                          ("rows", pa.int32()), ("cols", pa.int32()), ("pixel_spacing_mm", pa.list_(pa.float64())),
                          ("slice_spacing_mm", pa.float64()), ("hu", pa.list_(pa.float32()))])
TOKENS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("record_id", pa.string()),
                           ("input_ids", pa.list_(pa.int32()))])


def ehr_part() -> pa.Table:
    rows = []
    for subject in SPLIT_OF:
        rows += [(subject, None, "SEX//M", None, None), (subject, T0, "LAB//HB", 13.0 + subject % 7, None),
                 (subject, T0, "LAB//HB", 12.0, None), (subject, T0, "NOTE", None, "stable, discharged home.")]
    rows.append((TRAIN_A, T0, "NOTE", None, "cough " * 150))  # longer than one 128-token window
    return pa.Table.from_pylist([dict(zip(EVENTS_SCHEMA.names, r, strict=True)) for r in rows], schema=EVENTS_SCHEMA)


def dna_part() -> pa.Table:
    rows = [(s, f"{s:024x}", w, 8 * w, "ACGTACGTNACGTTGCA"[w:], 0.05) for s in SPLIT_OF for w in range(2)]
    return pa.Table.from_pylist([dict(zip(DNA_SCHEMA.names, r, strict=True)) for r in rows], schema=DNA_SCHEMA)


def image_part() -> pa.Table:
    rows = [{"subject_id": s, "record_id": f"{s:024x}", "slice_index": i, "n_slices": 2, "position_mm": 3.0 * i,
             "modality": "CT", "rows": 8, "cols": 8, "pixel_spacing_mm": [1.0, 1.0], "slice_spacing_mm": 3.0,
             "hu": [float(40 * i)] * 64} for s in SPLIT_OF for i in range(2)]
    return pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)


@pytest.fixture
def inputs(tmp_path):
    for name, table in {"ehr": ehr_part(), "dna": dna_part(), "image": image_part()}.items():
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "part-0.parquet")
    return tmp_path


def run_tokenizer(root: Path) -> Path:
    run_stage(root, "dna", "dna", {})
    return root / "dna" / "tok"


def split_file(root: Path, assigned: dict[int, str] | None = None) -> Path:
    """A staged split assignment as split/stratify.py writes one (no labelled subject by default)."""
    path = root / "splits" / "shard-0.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(state_text(FRACTIONS, assigned or {}))
    return path


def run_stage(root: Path, modality: str, source: str, params: dict, assigned: dict[int, str] | None = None,
              ) -> dict[str, Path]:
    part, tokenizer = root / source / "part-0.parquet", root / modality / "tok"
    splits = split_file(root, assigned)
    tokenize_modality.main(["fit", "--modality", modality, "--ingest-parts", str(part), "--fractions", json.dumps(FRACTIONS),
                        "--split-files", str(splits), "--out-dir", str(tokenizer), "--params-json", json.dumps(params)])
    outs = {split: root / "tokens" / modality / split / "shard-0.parquet" for split in ("train", "val", "test")}
    tokenize_modality.main(["encode", "--modality", modality, "--ingest-part", str(part), "--fractions", json.dumps(FRACTIONS),
                         "--split-file", str(splits), "--tokenizer-dir", str(tokenizer), "--out-train", str(outs["train"]),
                         "--out-val", str(outs["val"]), "--out-test", str(outs["test"]),
                         "--params-json", json.dumps(params)])
    return outs


@pytest.mark.parametrize(("modality", "source", "params"), [
    ("text", "ehr", {"vocab_size": 100}), ("ehr", "ehr", {"numeric_bins": 4}), ("dna", "dna", {"k": 4}),
    ("image", "image", {"size": 8})])
def test_cli_end_to_end(inputs, modality, source, params):
    outs = run_stage(inputs, modality, source, params)
    tokenizer = inputs / modality / "tok"
    digest = tokenizer_sha256(tokenizer)
    for split, path in outs.items():
        table = pq.read_table(path)
        if modality == "image":
            assert table.schema.names == ["subject_id", "record_id", "pixel_values", "channels", "height", "width"]
            assert table.num_rows == 2 * sum(s == split for s in SPLIT_OF.values())
        else:
            assert table.schema.remove_metadata() == TOKENS_SCHEMA
            assert all(ids[0] == CLS_ID for ids in table.column("input_ids").to_pylist())
        assert {SPLIT_OF[s] for s in table.column("subject_id").to_pylist()} == {split}
        meta = read_metadata(path)
        assert meta["stage"] == "tokenize" and meta["params"]["tokenizer_sha256"] == digest
        assert meta["params"]["modality"] == modality and all(meta["params"][k] == v for k, v in params.items())
    if modality == "text":  # TRAIN_A's long note: several windows of one record
        train = pq.read_table(outs["train"]).to_pylist()
        assert sum(r["subject_id"] == TRAIN_A for r in train) == 3 and len({r["record_id"] for r in train}) == 3
    if modality == "ehr":
        assert pq.read_table(outs["val"]).column("record_id").to_pylist() == [str(VAL_A)]
    if modality != "image":
        from transformers import PreTrainedTokenizerFast

        assert PreTrainedTokenizerFast.from_pretrained(str(tokenizer)).cls_token_id == CLS_ID


def test_empty_split_files_are_written(inputs):
    pq.write_table(ehr_part().filter(pa.compute.is_in(ehr_part().column("subject_id"), pa.array([TRAIN_A, TRAIN_B]))),
                   inputs / "ehr" / "part-0.parquet")
    outs = run_stage(inputs, "ehr", "ehr", {})
    assert pq.read_table(outs["val"]).num_rows == 0 and pq.read_table(outs["test"]).num_rows == 0
    assert pq.read_table(outs["test"]).schema.remove_metadata() == TOKENS_SCHEMA


def test_rows_get_the_split_stage_split_of_their_subject(inputs):
    """No split table: each row's split is subject_split.split_of of its pseudonym, as in subjects.parquet."""
    outs = {s: inputs / "x" / f"{s}.parquet" for s in ("train", "val", "test")}
    encode_shard(dna, inputs / "dna" / "part-0.parquet", FRACTIONS, run_tokenizer(inputs), outs, {})
    for split, path in outs.items():
        assert {split_of(s, FRACTIONS) for s in pq.read_table(path).column("subject_id").to_pylist()} <= {split}
    assert sum(pq.read_table(p).num_rows for p in outs.values()) == dna_part().num_rows


def test_a_labelled_subjects_staged_split_overrides_the_hash(inputs):
    """A subject the stratified assignment placed elsewhere goes there, in every split output and the fit."""
    moved = {TRAIN_A: "test"}
    outs = run_stage(inputs, "ehr", "ehr", {}, assigned=moved)
    assert TRAIN_A in pq.read_table(outs["test"]).column("subject_id").to_pylist()
    assert TRAIN_A not in pq.read_table(outs["train"]).column("subject_id").to_pylist()
    with pytest.raises(ValueError, match="split fractions"):  # a file staged for other fractions is refused
        (inputs / "splits" / "shard-0.json").write_text(state_text({"train": 0.9, "val": 0.05, "test": 0.05}, {}))
        tokenize_modality.main(["encode", "--modality", "ehr", "--ingest-part", str(inputs / "ehr" / "part-0.parquet"),
                                "--fractions", json.dumps(FRACTIONS), "--split-file",
                                str(inputs / "splits" / "shard-0.json"), "--tokenizer-dir", str(inputs / "ehr" / "tok"),
                                "--out-train", str(outs["train"]), "--out-val", str(outs["val"]),
                                "--out-test", str(outs["test"])])


def test_new_data_is_written_whole_with_the_fitted_tokenizer(inputs):
    """--out-all: every row in one file, for prediction; the same ids as the split outputs."""
    outs = run_stage(inputs, "text", "ehr", {"vocab_size": 100})
    whole = inputs / "new" / "all" / "shard-0.parquet"
    tokenize_modality.main(["encode", "--modality", "text", "--ingest-part", str(inputs / "ehr" / "part-0.parquet"),
                         "--tokenizer-dir", str(inputs / "text" / "tok"), "--out-all", str(whole),
                         "--params-json", json.dumps({"vocab_size": 100})])
    split_rows = pa.concat_tables([pq.read_table(p) for p in outs.values()]).sort_by("record_id")
    assert pq.read_table(whole).sort_by("record_id").to_pylist() == split_rows.to_pylist()
    with pytest.raises(SystemExit):  # both kinds of output at once is refused
        tokenize_modality.main(["encode", "--modality", "text", "--ingest-part", str(inputs / "ehr" / "part-0.parquet"),
                             "--tokenizer-dir", str(inputs / "text" / "tok"), "--out-all", str(whole),
                             "--out-train", str(whole)])


def test_unknown_param_is_refused_naming_the_key(inputs):
    with pytest.raises(ValueError, match="'vocab'"):
        run_stage(inputs, "text", "ehr", {"vocab": 10})
    with pytest.raises(ValueError, match=r"'tokenize\.dna\.overlapping'"):
        run_stage(inputs, "dna", "dna", {"overlapping": 1})


def test_encode_path_runs_standalone_without_transformers(inputs):
    """tokenize_modality.py encode exactly as Snakemake calls it; -X importtime lists every module it imports."""
    outs = run_stage(inputs, "text", "ehr", {})
    fresh = inputs / "fresh.parquet"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPTS / "tokenize_modality.py"), "encode", "--modality", "text",
         "--ingest-part", str(inputs / "ehr" / "part-0.parquet"), "--fractions", json.dumps(FRACTIONS),
         "--split-file", str(inputs / "splits" / "shard-0.json"),
         "--tokenizer-dir", str(inputs / "text" / "tok"), "--out-train", str(fresh),
         "--out-val", str(inputs / "v.parquet"), "--out-test", str(inputs / "t.parquet")],
        capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    imported = re.findall(r"\|\s+([\w.]+)$", result.stderr, flags=re.MULTILINE)
    assert "tokenizers" in imported and not [m for m in imported if m.split(".")[0] == "transformers"]
    assert pq.read_table(fresh).equals(pq.read_table(outs["train"]))
    assert "rows written" in result.stderr
