"""A pretrained text encoder and its tokenizer belong together.

Notes are tokenised once per run (`tokenize.text`). When a task loads a local pretrained text encoder
(`model.path` of a text task, or `model.encoders.text`), or continues pretraining one
(`pretrain.text.init_from`), the notes must be tokenised with that folder's own
tokenizer, or the ids land on the wrong rows of its embedding matrix. This module binds the two while the
workflow parses its config: it fills `tokenize.text.tokenizer_path` from the model folder when unset, and
stops the run, naming both keys, when they cannot match.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"


def external_text_encoders(config: dict, results: Path) -> dict[str, str]:
    """config key -> folder of every pretrained text encoder from outside the run, the pretrain stage's
    `init_from` included (a folder under results/ is another task's encoder, trained on this run's own tokens)."""
    found = {}
    for task, spec in config["tasks"].items():
        if "text" not in spec["modalities"]:
            continue
        model = spec.get("model", {})
        if model.get("encoders", {}).get("text"):
            key, folder = f"tasks.{task}.model.encoders.text", model["encoders"]["text"]
        elif model.get("path") and spec["modalities"] == ["text"]:
            key, folder = f"tasks.{task}.model.path", model["path"]
        else:
            continue
        if not Path(folder).resolve().is_relative_to(results.resolve()):
            found[key] = folder
    # Continued pretraining of a local text model reads the notes with that model's own ids too.
    init_from = (config.get("pretrain", {}).get("text") or {}).get("init_from")
    if init_from and not Path(init_from).resolve().is_relative_to(results.resolve()):
        found["pretrain.text.init_from"] = init_from
    return found


def tokenizer_digest(folder: str | Path, key: str) -> str:
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"config key '{key}': {folder} has no {TOKENIZER_FILE}; copy the tokenizer saved with "
                         "the model into the folder (save_pretrained writes it)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bind_text_tokenizer(config: dict, results: Path) -> str | None:
    """Set `tokenize.text.tokenizer_path` to the pretrained text encoders' tokenizer, or raise naming the
    keys that disagree; returns a note for the console when it set the key, else None."""
    encoders = external_text_encoders(config, results)
    if not encoders:
        return None
    digests = {key: tokenizer_digest(folder, key) for key, folder in encoders.items()}
    if len(set(digests.values())) > 1:
        raise ValueError("config keys " + " and ".join(f"'{k}'" for k in digests) + " load text encoders with "
                         "different tokenizers, but notes are tokenised once per run: use one model folder "
                         "for every text task")
    key, folder = next(iter(encoders.items()))
    text = config.setdefault("tokenize", {}).setdefault("text", {})
    configured = text.get("tokenizer_path")
    if configured is None:
        text["tokenizer_path"] = folder
        return f"tokenize.text.tokenizer_path set to {folder}: the tokenizer of '{key}'"
    if tokenizer_digest(configured, "tokenize.text.tokenizer_path") != digests[key]:
        raise ValueError(f"config keys 'tokenize.text.tokenizer_path' ({configured}) and '{key}' ({folder}) name "
                         "different tokenizers: the encoder would read ids of another vocabulary; leave "
                         "tokenize.text.tokenizer_path unset to use the model's own")
    return None
