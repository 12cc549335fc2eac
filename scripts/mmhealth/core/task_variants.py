"""Task variants: each task's declared `variants` and, for a fusion task, its automatic modality ablations,
expanded into effective task specs that the workflow trains and evaluates as tasks of their own.

A variant job is named `<task>~<variant>`; its spec is the task's, with the variant's `modalities` replacing
the task's, and its `model` and `finetune` merged key by key over the task's. Encoders the task starts from
(`model.encoders`) are kept for the modalities the variant still has. A variant shares its task's labels and
split, so its test predictions pair with the main model's on the same subjects.

Ablations of a task with modalities M (|M| >= 2): `without_<m>` (M minus m) for each m, and `only_<m>` for
each m; with two modalities `without_a` is `only_b`, so only the `only_<m>` are made. A declared variant of
the same name refines the generated one; `ablation_finetune` is merged into the finetune of every generated
one (e.g. fewer epochs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from mmhealth.core.config import section_values

SEPARATOR = "~"
MAIN, DECLARED, ABLATION = "main", "declared", "ablation"
VARIANT_KEYS = ("variants", "ablations", "ablation_finetune")  # a task's keys that make variants, not a model


@dataclass(frozen=True)
class TaskJob:
    """One model the workflow trains: a task itself or one of its variants."""

    task: str  # the task it belongs to (labels, split, page)
    variant: str | None  # None for the task's own (main) model
    kind: str  # MAIN, DECLARED or ABLATION
    spec: dict = field(compare=False)  # modalities, labels, model, finetune: as a task's

    @property
    def name(self) -> str:
        return self.task if self.variant is None else variant_job(self.task, self.variant)


def variant_job(task: str, variant: str) -> str:
    return f"{task}{SEPARATOR}{variant}"


def merged(base: dict, override: dict) -> dict:
    """`override` over `base`, key by key into nested dicts; other values replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def ablation_overrides(modalities: list[str]) -> dict[str, dict]:
    """name -> {"modalities": [...]} of the leave-one-out and single-modality ablations (none below 2)."""
    if len(modalities) < 2:
        return {}
    out = {}
    if len(modalities) > 2:  # with two, leaving one out is the other alone
        out.update({f"without_{m}": {"modalities": [x for x in modalities if x != m]} for m in modalities})
    out.update({f"only_{m}": {"modalities": [m]} for m in modalities})
    return out


def variant_spec(spec: dict, override: dict) -> dict:
    """The effective spec of a variant: the task's spec with the override applied."""
    out = {k: copy.deepcopy(v) for k, v in spec.items() if k not in VARIANT_KEYS}
    if "modalities" in override:
        out["modalities"] = list(override["modalities"])
    for key in ("model", "finetune"):
        if key in override:
            out[key] = merged(out.get(key, {}), override[key])
    encoders = out.get("model", {}).get("encoders")
    if encoders is not None:
        kept = {m: path for m, path in encoders.items() if m in out["modalities"]}
        if kept:
            out["model"]["encoders"] = kept
        else:
            del out["model"]["encoders"]
    return out


def differences(spec: dict, variant: dict, prefix: str = "") -> list[str]:
    """What a variant's spec changes from its task's, one 'key: value' each (e.g. 'finetune.epochs: 4')."""
    out = []
    for key in sorted(set(spec) | set(variant)):
        if key in VARIANT_KEYS or spec.get(key) == variant.get(key):
            continue
        if prefix == "model.encoders." and key not in variant:  # dropped with its modality: said there
            continue
        if isinstance(spec.get(key), dict) and isinstance(variant.get(key), dict):
            out += differences(spec[key], variant[key], f"{prefix}{key}.")
        elif isinstance(variant.get(key), list):
            out.append(f"{prefix}{key}: {', '.join(map(str, variant[key]))}")
        else:
            out.append(f"{prefix}{key}: {variant.get(key, 'unset')}")
    return out


def checked(task: str, name: str, spec: dict) -> dict:
    """The variant's spec validated as a task's (bounds, unknown keys); the error names the variant."""
    try:
        filled = section_values("tasks.*", spec)
    except ValueError as error:
        raise ValueError(str(error).replace("config key 'tasks.*", f"config key 'tasks.{task}.variants.{name}"))\
            from None
    return {k: v for k, v in filled.items() if k not in VARIANT_KEYS}


def task_jobs(tasks: dict[str, dict]) -> dict[str, TaskJob]:
    """Job name -> TaskJob for every task (its main model) and every variant, tasks in sorted order."""
    jobs = {}
    for task in sorted(tasks):
        spec = tasks[task]
        jobs[task] = TaskJob(task, None, MAIN, spec)
        generated = ablation_overrides(spec["modalities"]) if spec.get("ablations", True) else {}
        if spec.get("ablation_finetune"):
            generated = {name: {**o, "finetune": spec["ablation_finetune"]} for name, o in generated.items()}
        declared = spec.get("variants") or {}
        for name in sorted({*generated, *declared}):
            override = merged(generated.get(name, {}), declared.get(name, {}))
            kind = ABLATION if name in generated else DECLARED
            job = TaskJob(task, name, kind, checked(task, name, variant_spec(spec, override)))
            jobs[job.name] = job
    return jobs
