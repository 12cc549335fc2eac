"""Typed config objects built from the one place defaults and bounds live: workflow/schemas/config.schema.yaml.

A dataclass that mirrors a config section names it in `SECTION` (dotted, `*` for a map key such as a task
name) and declares no defaults. `from_config` fills the schema's defaults, validates the values against the
schema's bounds (an error names the key) and builds the object: a job given a section by its rule, a test
or a user running a script by hand all get the same values.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"
T = TypeVar("T")


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def section_schema(section: str) -> dict:
    """The schema of a dotted config section (`tokenize.dna`, `tasks.*.finetune`), $refs resolved."""
    root = _schema()
    node = root
    for key in section.split("."):
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
        if "$ref" in node:
            node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return {"$defs": root.get("$defs", {}), **node}


def _fill_defaults(values: dict, schema: dict) -> dict:
    for key, sub in schema.get("properties", {}).items():
        if key not in values and "default" in sub:
            values[key] = copy.deepcopy(sub["default"])
        if isinstance(values.get(key), dict) and "properties" in sub:
            _fill_defaults(values[key], sub)
    return values


def section_values(section: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """`values` with the schema's defaults filled in, validated; ValueError naming the key otherwise."""
    schema = section_schema(section)
    filled = _fill_defaults(copy.deepcopy(dict(values or {})), schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(filled), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        where = ".".join([section, *map(str, error.absolute_path)])
        raise ValueError(f"config key '{where}': {error.message}")
    return filled


def from_config(cls: type[T], values: dict[str, Any] | None = None, **overrides: Any) -> T:
    """An instance of the dataclass `cls` from its config section's values (defaults from the schema)."""
    filled = section_values(cls.SECTION, {**(values or {}), **overrides})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # JSON has one number type: a float field given 40 gets 40.0, as the dataclass says
    kwargs = {k: float(v) if fields[k].type == "float" and isinstance(v, int) and not isinstance(v, bool) else v
              for k, v in filled.items() if k in fields}
    return cls(**kwargs)


def _schema_at(path: list) -> dict:
    """The schema node that validates the value at `path` (keys; map keys match additionalProperties)."""
    root = _schema()
    node = root
    for key in path:
        if "$ref" in node:
            node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        if isinstance(key, int):
            node = node.get("items", {})
        elif key in node.get("properties", {}):
            node = node["properties"][key]
        else:
            node = node.get("additionalProperties") if isinstance(node.get("additionalProperties"), dict) else {}
    if "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _problem(error: jsonschema.ValidationError) -> list[str]:
    where = ".".join(map(str, error.absolute_path))
    prefix = f"config key '{where}'" if where else "config"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(_schema_at(list(error.absolute_path)).get("properties", {}))
        lines = []
        for key in sorted(set(error.instance) - set(known)):
            full = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            lines.append(f"config key '{full}': unknown key{hint}")
        return lines
    if error.validator == "enum":
        close = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return [f"{prefix}: {error.instance!r} is not one of {error.validator_value}{hint}"]
    return [f"{prefix}: {error.message}"]


def config_problems(config: dict) -> list[str]:
    """Every problem of a whole workflow config against the schema, one line each naming the key, with a
    "did you mean" for a misspelt key or value; empty when valid."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return list(dict.fromkeys(line for error in errors for line in _problem(error)))
