"""The JSON Schema that defines the config, and the generic walks over it.

Everything about a field (its type, bounds, default, title and help text) lives
in schema.json; this module only reads it. The validator, the defaults, the
typed config classes, `trainer init` and the UI form all come from here.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from importlib import resources
from typing import Any, Iterator


@functools.cache
def load_schema() -> dict:
    return json.loads(resources.files("trainer.config").joinpath("schema.json").read_text(encoding="utf-8"))


def schema_text() -> str:
    return resources.files("trainer.config").joinpath("schema.json").read_text(encoding="utf-8")


def types_of(schema: dict) -> list[str]:
    """The JSON types a (sub)schema allows, derived from `type`, `enum` or `const`."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return list(declared)
    values = schema.get("enum", [schema["const"]] if "const" in schema else [])
    found = []
    for value in values:
        name = json_type(value)
        if name not in found:
            found.append(name)
    return found


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_section(schema: dict) -> bool:
    """A nested block of keys (which may also be allowed to be empty)."""
    return "object" in types_of(schema) and "properties" in schema


def sections(schema: dict, path: tuple = ()) -> Iterator[tuple[tuple, dict]]:
    """Every section of the schema with its path, the root first."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        if is_section(sub):
            yield from sections(sub, path + (name,))


def subschema(path: tuple, schema: dict | None = None) -> dict | None:
    """The schema of the value at `path`, or None when the path is not in the schema."""
    node: Any = schema or load_schema()
    for part in path:
        if isinstance(part, int):
            node = node.get("items")
        else:
            node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return node


def apply_defaults(schema: dict, data: dict) -> dict:
    """A copy of `data` with every missing key that has a default filled in, sections included."""
    out = dict(data)
    for name, sub in schema.get("properties", {}).items():
        if name not in out:
            if "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            elif is_section(sub) and "null" not in types_of(sub):
                out[name] = apply_defaults(sub, {})
        elif is_section(sub) and isinstance(out[name], dict):
            out[name] = apply_defaults(sub, out[name])
    return out


def coerce_numbers(schema: dict, data: Any) -> Any:
    """Turn numbers written as text into numbers where the schema wants a number.

    YAML reads `learning_rate: 2e-4` as the text "2e-4" (its float syntax needs a
    dot), which is the most common config mistake there is; we read it as meant.
    """
    if isinstance(data, dict):
        props = schema.get("properties", {})
        return {k: coerce_numbers(props[k], v) if k in props else v for k, v in data.items()}
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        return [coerce_numbers(schema["items"], v) for v in data]
    if isinstance(data, str):
        wanted = types_of(schema)
        if "number" in wanted or "integer" in wanted:
            try:
                number = float(data.strip().replace("_", ""))
            except ValueError:
                return data
            if not math.isfinite(number):
                return data
            if "integer" in wanted and number.is_integer():
                return int(number)
            if "number" in wanted:
                return number
    return data
