"""Pinned per-rule conda envs: every job rule names one, each env pins exactly what pyproject.toml pins, and each
provides every third-party module its rule's code imports (the entry script and the mmhealth modules it
reaches, as the rule's code input lists them)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from mmhealth.core.code_inputs import code_files

REPO = Path(__file__).resolve().parents[2]
RULES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
SCRIPTS = REPO / "scripts"
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


def smk_literal(name: str, path: Path = REPO / "workflow" / "rules" / "code.smk"):
    """The literal value assigned to NAME at top level in a rule file (parsed by pieces: .smk is not Python)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} ="))
    for end in range(start + 1, len(lines) + 1):
        try:
            tree = ast.parse("\n".join(lines[start:end]))
        except SyntaxError:
            continue
        return ast.literal_eval(tree.body[0].value)
    raise AssertionError(f"{name} in {path.name} does not parse")


ENTRY_ENV: dict[str, str] = smk_literal("ENTRY_ENV")


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


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (anywhere in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party(modules: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("__future__", "mmhealth")}


def test_every_job_rule_has_an_entry_env_and_a_log():
    blocks = rule_blocks()
    assert len(blocks) > 10
    for name, body in blocks.items():
        if re.search(r"^\s+localrule:\s*True", body, re.M):
            continue
        env = re.search(r"^\s+conda:\s*\n\s+entry_env\(\"(\w+)\"\)", body, re.M)
        assert env, f"rule {name}: no `conda: entry_env(\"<entry>\")`"
        assert env[1] in ENTRY_ENV, f"rule {name}: unknown entry '{env[1]}'"
        assert re.search(r"^\s+log:\s*\n\s+\S", body, re.M), f"rule {name}: no log:"


def test_every_entry_script_has_an_env_and_every_env_serves_one():
    for entry in ENTRY_ENV:
        assert (SCRIPTS / f"{entry}.py").exists(), f"ENTRY_ENV names {entry}, but scripts/{entry}.py does not exist"
    env_files = {path.stem for path in (REPO / "envs").glob("*.yaml")}
    assert set(ENTRY_ENV.values()) == env_files, "every env file serves an entry, every entry has an env file"


@pytest.mark.parametrize("env", sorted(set(ENTRY_ENV.values())))
def test_env_pins_agree_with_pyproject(env):
    pins = env_pins(env)
    assert pins
    project = project_pins()
    for name, version in pins.items():
        assert name in project, f"envs/{env}.yaml pins {name}, which pyproject.toml does not"
        assert version == project[name], f"envs/{env}.yaml: {name}=={version}, pyproject.toml: {project[name]}"


@pytest.mark.parametrize("entry", sorted(ENTRY_ENV))
def test_entry_env_provides_every_import(entry):
    distributions = packages_distributions()
    provided = set(env_pins(ENTRY_ENV[entry]))
    code = [Path(f) for f in code_files(SCRIPTS / f"{entry}.py") if f.endswith(".py")]
    missing = []
    for module in sorted(third_party(set().union(*map(imported_modules, code)))):
        names = {normalise(d) for d in distributions.get(module, [])}
        assert names, f"{entry}: no installed distribution provides `import {module}`"
        if not names & provided:
            missing.append(f"{module} ({' or '.join(sorted(names))})")
    assert not missing, f"envs/{ENTRY_ENV[entry]}.yaml lacks what {entry} imports: {', '.join(missing)}"


def test_import_scan_skips_the_standard_library_and_our_package(tmp_path):
    (tmp_path / "main.py").write_text("import json\nfrom mmhealth.core import config\n\ndef f():\n"
                                      "    import yaml\n    from Bio import SeqIO\n    from sklearn.metrics import roc_auc_score\n")
    assert third_party(imported_modules(tmp_path / "main.py")) == {"sklearn", "yaml", "Bio"}
    distributions = packages_distributions()
    assert normalise(distributions["sklearn"][0]) == "scikit-learn"
    assert normalise(distributions["yaml"][0]) == "pyyaml"
