"""The code a rule runs: its entry script and every mmhealth module that script imports, transitively.

Snakemake lists these files as the rule's `code` input, so editing a module re-runs exactly the jobs that
import it. The list is read from the imports themselves (with `ast`, nothing is executed), so it cannot
drift from the code. One convention narrows it further: a module named after a modality (`dna.py`,
`dna_kmers.py`, `ehr_scrub.py`) is that modality's code, and a job that handles only some modalities lists
only theirs; editing DNA code then re-runs no job of an image-only task.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

from mmhealth.core.modalities import MODALITIES

SCRIPTS = Path(__file__).resolve().parents[2]
PACKAGE = "mmhealth"
# Files a module reads at run time besides Python: they are code inputs too.
DATA_FILES = {"mmhealth.core.config": [SCRIPTS.parent / "workflow" / "schemas" / "config.schema.yaml"]}


def module_path(name: str) -> Path | None:
    """The file of an mmhealth module (`mmhealth.tokenize.dna` -> scripts/mmhealth/tokenize/dna.py)."""
    base = SCRIPTS.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def imported_modules(path: Path) -> tuple[str, ...]:
    """The mmhealth modules a file imports anywhere in it (top level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            # `from mmhealth.tokenize import dna` imports the submodule dna; `from mmhealth.x import f`, a name
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if module_path(f"{node.module}.{a.name}")]
    return tuple(dict.fromkeys(m for m in found if module_path(m)))


def modality_of(module: str) -> str | None:
    """The modality a module belongs to by its name (`dna_kmers` -> dna), or None for shared code."""
    first = module.rsplit(".", 1)[-1].split("_")[0]
    return first if first in MODALITIES else None


def code_files(entry: Path, modalities: Iterable[str] | None = None) -> list[str]:
    """`entry` first, then every file it reaches through mmhealth imports, sorted. With `modalities`, the
    modules of other modalities are left out (and not followed)."""
    keep = None if modalities is None else set(modalities)
    seen: dict[str, Path] = {}
    todo = list(imported_modules(Path(entry)))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        owner = modality_of(name)
        if keep is not None and owner is not None and owner not in keep:
            continue
        seen[name] = module_path(name)
        todo += imported_modules(seen[name])
    files = {str(p) for p in seen.values() if p.name != "__init__.py" or p.stat().st_size}
    files |= {str(f) for name in seen for f in DATA_FILES.get(name, [])}
    return [str(entry), *sorted(files)]
