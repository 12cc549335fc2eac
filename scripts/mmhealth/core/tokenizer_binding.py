"""A pretrained encoder and its tokenizer belong together: one tokenised view per tokenizer, not per modality.

The pipeline's own view of a modality is `tokenize.<modality>` as configured (for text: a WordPiece fitted on
train-split notes, or the folder `tokenize.text.tokenizer_path` names). A task whose text encoder comes from
a pretrained folder outside the run (`model.path` of a text task, `model.encoders.text`) must read notes
tokenised with that folder's own tokenizer, or its ids land on the wrong rows of the embedding matrix. Unless
that tokenizer is the pipeline's, the task reads a view of its own, named by a short digest of the folder's
tokenizer.json: identical tokenizers share a view, and adding a task with another tokenizer adds a view
without touching the others. An encoder trained in this run (a folder inside another task's model) reads the
view that task read; one another stage of the run writes reads the view that stage names (`produced`).

`tokenizer_view` answers the one question every reader of tokens asks (a task's encoder here; any stage that
starts from a checkpoint may ask it too): which view holds this modality tokenised for this encoder folder?
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"
VIEW_MODALITIES = ("text",)  # modalities whose pretrained folders bring a tokenizer of their own
DIGEST_CHARS = 12  # of the tokenizer.json's sha256: the view's name


def tokenizer_digest(folder: str | Path, key: str) -> str:
    """sha256 of the folder's tokenizer.json; ValueError naming config key `key` when there is none."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"config key '{key}': {folder} has no {TOKENIZER_FILE}; copy the tokenizer saved with "
                         "the model into the folder (save_pretrained writes it)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_view(config: dict, modality: str, folder: str | Path, key: str) -> str | None:
    """The view of `modality` tokenised with the tokenizer in encoder folder `folder` (named by config key
    `key`): None for the pipeline's own view, else the view's name (a short digest of the tokenizer)."""
    if modality not in VIEW_MODALITIES:
        return None  # dna, ehr and image encoders read the pipeline's tokens; finetune checks the vocabulary
    digest = tokenizer_digest(folder, key)
    configured = config.get("tokenize", {}).get(modality, {}).get("tokenizer_path")
    if configured and tokenizer_digest(configured, f"tokenize.{modality}.tokenizer_path") == digest:
        return None
    return digest[:DIGEST_CHARS]


def encoder_folder(spec: dict, modality: str) -> tuple[str, str] | None:
    """(config key under the task, folder) of the pretrained encoder a task starts `modality` from, if any."""
    model = spec.get("model", {})
    if model.get("encoders", {}).get(modality):
        return f"model.encoders.{modality}", model["encoders"][modality]
    if model.get("path") and spec["modalities"] == [modality]:
        return "model.path", model["path"]
    return None


@dataclass(frozen=True)
class TokenViews:
    by_task: dict[str, dict[str, str | None]]  # task -> modality -> view (None: the pipeline's own)
    sources: dict[str, str]  # view -> the encoder folder whose tokenizer it is tokenised with


def task_token_views(config: dict, model_dirs: dict[str, str | Path], results: str | Path,
                     produced: dict[str, dict[str, str | None]] | None = None,
                     specs: dict[str, dict] | None = None) -> TokenViews:
    """Each task's view of each of its modalities. `model_dirs`: task -> its model folder in this run (an
    encoder inside one was trained on that task's view). `specs`: each model job's effective spec (tasks
    and their variants; default config `tasks`). `produced`: other folders this run writes that an
    encoder may start from (a pretrained model) -> modality -> the folder whose tokenizer it was trained with
    (None: the pipeline's), e.g. {pretrained text folder: {"text": pretrain.text.init_from}}. Any other folder
    under `results` is the run's own and reads the pipeline's view; a folder outside it is a pretrained
    encoder, read with its own tokenizer. Every view a produced folder needs is in `sources` too."""
    by_task: dict[str, dict[str, str | None]] = {}
    sources: dict[str, str] = {}
    produced_views: dict[Path, dict[str, str | None]] = {}
    for folder, tokenizers in (produced or {}).items():
        views = produced_views.setdefault(Path(folder).resolve(), {})
        for modality, source in tokenizers.items():
            views[modality] = source and tokenizer_view(config, modality, source, f"{folder} ({modality})")
            if views[modality]:
                sources.setdefault(views[modality], source)

    def within(folder: str, roots: list[tuple]) -> object | None:
        """The key of the first (key, root) whose root holds `folder`."""
        found = Path(folder).resolve()
        return next((key for key, root in roots if found.is_relative_to(Path(root).resolve())), None)

    def resolve(task: str, seen: frozenset[str]) -> dict[str, str | None]:
        if task in by_task:
            return by_task[task]
        spec, views = (specs or config["tasks"])[task], {}
        for modality in spec["modalities"]:
            found = encoder_folder(spec, modality)
            if not found:
                views[modality] = None
            elif origin := within(found[1], sorted(model_dirs.items())):  # a cycle is left for Snakemake
                views[modality] = None if origin in seen else resolve(origin, seen | {task}).get(modality)
            elif folder := within(found[1], [(root, root) for root in produced_views]):
                views[modality] = produced_views[folder].get(modality)
            elif Path(found[1]).resolve().is_relative_to(Path(results).resolve()):
                views[modality] = None
            else:
                views[modality] = tokenizer_view(config, modality, found[1], f"tasks.{task}.{found[0]}")
                if views[modality]:
                    sources.setdefault(views[modality], found[1])
        by_task[task] = views
        return views

    for task in sorted(specs or config["tasks"]):
        resolve(task, frozenset())
    return TokenViews(by_task, sources)
