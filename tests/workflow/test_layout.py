"""The layout a newcomer traces: thin entry scripts named by their rule, a package that mirrors the stages,
and no module that nothing runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_envs import ENTRY_ENV, rule_blocks

from mmhealth.core.code_inputs import code_files

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
STAGES = {"core", "ingest", "split", "tokenize", "pretrain", "train", "evaluate", "report", "predict", "demo"}
OTHER_ENTRIES = {"make_demo_data"}  # run by the Makefile, not by a rule


def test_every_script_is_an_entry_point_of_a_rule_or_the_makefile():
    entries = {p.stem for p in SCRIPTS.glob("*.py")}
    assert entries == set(ENTRY_ENV) | OTHER_ENTRIES
    used = " ".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    assert len(rule_blocks()) > 10
    for entry in ENTRY_ENV:
        assert re.search(rf'(entry_code|modality_code|task_code)\("{entry}"\)', used), f"no rule runs {entry}.py"
    assert "scripts/make_demo_data.py" in (REPO / "Makefile").read_text()


def test_entry_points_are_thin():
    """argparse, then one call into the package: the logic is where tests and the next reader find it."""
    for path in SCRIPTS.glob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert functions == ["main"], f"{path.name} defines {functions}"
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mmhealth")]
        assert imports, f"{path.name} calls nothing in the mmhealth package"
        assert len(path.read_text().splitlines()) < 60, f"{path.name} is not thin"


def test_package_folders_are_the_stages():
    package = SCRIPTS / "mmhealth"
    assert {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"} == STAGES
    assert not [p for p in package.glob("*.py") if p.name != "__init__.py"]


def test_no_module_that_nothing_runs():
    reached = set()
    for entry in [*ENTRY_ENV, *OTHER_ENTRIES]:
        reached |= {Path(f) for f in code_files(SCRIPTS / f"{entry}.py")}
    # the workflow itself imports a few modules while Snakemake parses it (the raw-file index, code inputs)
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for module in re.findall(r"^\s*from (mmhealth[\w.]*) import (\w+)", smk.read_text(), re.M):
            base = SCRIPTS.joinpath(*module[0].split("."))
            reached |= {p for p in (base / f"{module[1]}.py", base.with_suffix(".py")) if p.exists()}
    modules = {p for p in (SCRIPTS / "mmhealth").rglob("*.py") if p.name != "__init__.py"}
    assert not modules - reached, f"no entry point imports {sorted(str(p) for p in modules - reached)}"
