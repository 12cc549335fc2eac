"""Pinned per-stage conda envs: every job rule names one, each env pins exactly what pyproject.toml pins, and each
provides every third-party module its stage's scripts import (read with ast, following sibling imports)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
SCRIPTS = REPO / "scripts"
MODALITIES = ("image", "dna", "text", "ehr")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!*-]+)$")
CONDA_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==?([0-9][A-Za-z0-9.*+!-]*)$")


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def rule_blocks() -> dict[str, str]:
    """Rule name -> the text of its definition, over every rule file."""
    blocks = {}
    for path in RULES:
        for block in re.split(r"^rule ", path.read_text(), flags=re.M)[1:]:
            name, body = block.split(":", 1)
            assert name.strip() not in blocks, f"rule {name.strip()} defined twice"
            blocks[name.strip()] = body
    return blocks


def common_literal(name: str):
    """The literal value assigned to NAME at top level in common.smk (not Python as a whole: parsed by pieces)."""
    lines = (REPO / "workflow" / "rules" / "common.smk").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} ="))
    for end in range(start + 1, len(lines) + 1):
        try:
            tree = ast.parse("\n".join(lines[start:end]))
        except SyntaxError:
            continue
        return ast.literal_eval(tree.body[0].value)
    raise AssertionError(f"{name} in common.smk does not parse")


STAGE_ENV: dict[str, str] = common_literal("STAGE_ENV")
STAGE_CODE: dict[str, list[str]] = common_literal("STAGE_CODE")


def env_pins(env: str) -> dict[str, str]:
    """Normalised pip name -> version for one envs/<env>.yaml; fails on any dependency not pinned exactly."""
    spec = yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text())
    pins = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for requirement in dep["pip"]:
                match = PIN.match(requirement.replace(" ", ""))
                assert match, f"envs/{env}.yaml: pip requirement '{requirement}' is not pinned with =="
                pins[normalise(match[1])] = match[2]
        else:
            # conda's own packages (python, pip): `=` pins a release series, as conda spells it
            assert CONDA_PIN.match(dep.replace(" ", "")), f"envs/{env}.yaml: conda dependency '{dep}' is not pinned"
    return pins


def project_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        match = PIN.match(requirement.replace(" ", ""))
        assert match, f"pyproject.toml: '{requirement}' is not pinned with =="
        pins[normalise(match[1])] = match[2]
    return pins


def imported_modules(script: Path, seen: set[Path] | None = None) -> set[str]:
    """Top-level names of every module `script` imports, following imports of sibling scripts/ modules."""
    seen = set() if seen is None else seen
    if script in seen:
        return set()
    seen.add(script)
    names = set()
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found = [node.module]
        else:
            continue
        for module in found:
            top = module.split(".")[0]
            sibling = SCRIPTS / f"{top}.py"
            if sibling.exists():
                names |= imported_modules(sibling, seen)
            else:
                names.add(top)
    return names


def stage_scripts(stage: str) -> list[Path]:
    """The stage's scripts; {modality} patterns expanded to every modality."""
    names = {name.format(modality=m) for name in STAGE_CODE[stage] for m in MODALITIES}
    return [SCRIPTS / name for name in sorted(names)]


def third_party(modules: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m != "__future__"}


def test_every_job_rule_has_a_stage_env_and_a_log():
    blocks = rule_blocks()
    assert len(blocks) > 10
    for name, body in blocks.items():
        if re.search(r"^\s+localrule:\s*True", body, re.M):
            continue
        env = re.search(r"^\s+conda:\s*\n\s+stage_env\(\"(\w+)\"\)", body, re.M)
        assert env, f"rule {name}: no `conda: stage_env(\"<stage>\")`"
        assert env[1] in STAGE_ENV, f"rule {name}: unknown stage '{env[1]}'"
        assert re.search(r"^\s+log:\s*\n\s+\S", body, re.M), f"rule {name}: no log:"


def test_stage_tables_name_the_same_stages_and_existing_files():
    assert STAGE_ENV.keys() == STAGE_CODE.keys()
    for stage in STAGE_CODE:
        for script in stage_scripts(stage):
            assert script.exists(), f"STAGE_CODE['{stage}']: {script.name} does not exist"
    env_files = {path.stem for path in (REPO / "envs").glob("*.yaml")}
    assert set(STAGE_ENV.values()) == env_files, "every env file serves a stage, every stage has an env file"


@pytest.mark.parametrize("env", sorted(set(STAGE_ENV.values())))
def test_env_pins_agree_with_pyproject(env):
    pins = env_pins(env)
    assert pins
    project = project_pins()
    for name, version in pins.items():
        assert name in project, f"envs/{env}.yaml pins {name}, which pyproject.toml does not"
        assert version == project[name], f"envs/{env}.yaml: {name}=={version}, pyproject.toml: {project[name]}"


@pytest.mark.parametrize("stage", sorted(STAGE_CODE))
def test_stage_env_provides_every_import(stage):
    distributions = packages_distributions()
    provided = set(env_pins(STAGE_ENV[stage]))
    missing = []
    for module in sorted(third_party(set().union(*map(imported_modules, stage_scripts(stage))))):
        names = {normalise(d) for d in distributions.get(module, [])}
        assert names, f"stage {stage}: no installed distribution provides `import {module}`"
        if not names & provided:
            missing.append(f"{module} ({' or '.join(sorted(names))})")
    assert not missing, f"envs/{STAGE_ENV[stage]}.yaml lacks what stage {stage} imports: {', '.join(missing)}"


def sibling_modules(script: Path, seen: set[Path] | None = None) -> set[str]:
    """File names of the scripts/ modules `script` imports, directly or through each other."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        for name in names:
            sibling = SCRIPTS / f"{name.split('.')[0]}.py"
            if sibling.exists() and sibling not in seen:
                seen.add(sibling)
                sibling_modules(sibling, seen)
    return {path.name for path in seen}


@pytest.mark.parametrize("stage", sorted(STAGE_CODE))
def test_stage_code_lists_every_module_the_stage_runs(stage):
    # STAGE_CODE files are rule inputs: a module missing there can change without re-running its stage.
    listed = {path.name for path in stage_scripts(stage)}
    imported = set().union(*(sibling_modules(path) for path in stage_scripts(stage)))
    assert imported <= listed, f"STAGE_CODE['{stage}'] lacks {sorted(imported - listed)}"


def test_import_scan_follows_siblings_and_skips_the_standard_library(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "SCRIPTS", tmp_path)
    (tmp_path / "helper.py").write_text("import json\nfrom sklearn.metrics import roc_auc_score\n")
    (tmp_path / "main.py").write_text("import helper\n\ndef f():\n    import yaml\n    from Bio import SeqIO\n")
    assert third_party(imported_modules(tmp_path / "main.py")) == {"sklearn", "yaml", "Bio"}
    distributions = packages_distributions()
    assert normalise(distributions["sklearn"][0]) == "scikit-learn"
    assert normalise(distributions["yaml"][0]) == "pyyaml"
