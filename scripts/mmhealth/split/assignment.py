"""The staged split assignment files of `split/stratify.py` (subject -> split), read by the jobs that place
rows in splits. Kept apart from the parse-time code that writes them, so a job's code inputs stay small."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

STATE_VERSION = 1


def state_text(fractions: Mapping[str, float], subjects: Mapping[int, str]) -> str:
    body = {"version": STATE_VERSION, "fractions": dict(fractions),
            "subjects": {str(s): subjects[s] for s in sorted(subjects)}}
    return json.dumps(body, indent=0, sort_keys=True) + "\n"


def read_assignment(path: str | os.PathLike, fractions: Mapping[str, float]) -> dict[int, str] | None:
    """A staged assignment (subject -> split); None when absent, of another version or other fractions."""
    path = Path(path)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if state.get("version") != STATE_VERSION or state["fractions"] != dict(fractions):
        return None
    return {int(s): split for s, split in state["subjects"].items()}


def read_assignments(paths: list[str | os.PathLike], fractions: Mapping[str, float]) -> dict[int, str]:
    """The union of per-shard assignment files, which must have been made for these fractions."""
    merged: dict[int, str] = {}
    for path in paths:
        state = json.loads(Path(path).read_text())
        if state.get("version") != STATE_VERSION or state["fractions"] != dict(fractions):
            raise ValueError(f"{path}: made for split fractions {state.get('fractions')}, not {dict(fractions)}; "
                             "re-run Snakemake, which stages it again")
        merged.update({int(s): split for s, split in state["subjects"].items()})
    return merged
