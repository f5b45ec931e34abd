"""The typed, frozen config object, built from validated data.

The classes, one frozen dataclass per schema section, are written out from
schema.json into sections.py by `python -m trainer.config.generate`, so a type
checker sees every field; a test fails when they and the schema differ.
Values are converted to the schema's types on the way in (numbers to float,
lists to tuples), so two configs that mean the same thing compare equal.
"""
from __future__ import annotations

from typing import Any

from trainer.config.base import ConfigBase, Section
from trainer.config.schema import is_section, load_schema, types_of
from trainer.config.sections import SECTION_CLASSES, Config

__all__ = ["SECTION_CLASSES", "Config", "ConfigBase", "Section", "build_config"]


def build_config(data: dict, env_refs: dict | None = None) -> Config:
    """Make the typed config from validated, defaults-filled data."""
    config = _build(load_schema(), (), data, env_refs or {})
    assert isinstance(config, Config)
    return config


def _build(schema: dict, path: tuple, data: dict, env_refs: dict) -> Section:
    values = {}
    for name, prop in schema["properties"].items():
        value = data.get(name)
        if is_section(prop) and isinstance(value, dict):
            value = _build(prop, path + (name,), value, env_refs)
        else:
            value = _typed(prop, value)
        values[name] = value
    if not path:
        values["env_refs"] = dict(env_refs)
    return SECTION_CLASSES[path](**values)


def _typed(schema: dict, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and "number" in types_of(schema):
        return float(value)
    return value
