"""The typed, frozen config object, built from the schema.

One frozen dataclass per schema section, made at import time from schema.json,
so no field list is written twice: a key added to the schema is a field here.
Values are converted to the schema's types on the way in (numbers to float,
lists to tuples), so two configs that mean the same thing compare equal.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, cast

import yaml

from trainer.config.schema import is_section, load_schema, sections, types_of
from trainer.patterns import set_path

_PY_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": tuple, "null": type(None)}


class Section:
    """Base of every generated section class."""

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(cast(Any, self)):  # every Section subclass is made a dataclass
            if not f.compare:
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(cast(Any, self), **changes)


class ConfigBase(Section):
    """The root: adds YAML output. `env_refs` remembers values written as ${VAR} so they are written back that way."""

    env_refs: dict[tuple, str]  # a field of the generated root class (below); named here for the type checker

    def to_yaml(self) -> str:
        data = self.to_dict()
        for path, original in self.env_refs.items():
            set_path(data, path, original)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _class_name(path: tuple) -> str:
    return "".join(p.title().replace("_", "") for p in path) + "Config" if path else "Config"


def _annotation(schema: dict) -> Any:
    if is_section(schema):
        return Optional[SECTION_CLASSES[_path_of[id(schema)]]] if "null" in types_of(schema) else SECTION_CLASSES[_path_of[id(schema)]]
    if "anyOf" in schema:
        return Any
    kinds = [_PY_TYPES.get(t, Any) for t in types_of(schema)]
    return Optional[kinds[0]] if len(kinds) == 2 and type(None) in kinds else (kinds[0] if len(kinds) == 1 else Any)


SECTION_CLASSES: dict[tuple, type] = {}
_path_of: dict[int, tuple] = {}


def _build_classes() -> None:
    schema = load_schema()
    ordered = list(sections(schema))
    for path, sub in ordered:
        _path_of[id(sub)] = path
    for path, sub in reversed(ordered):  # children first, so annotations can name them
        fields: list[tuple] = [(name, _annotation(prop)) for name, prop in sub["properties"].items()]
        bases: tuple[type, ...] = (Section,)
        if not path:
            fields.append(("env_refs", dict, dataclasses.field(default_factory=dict, compare=False, repr=False)))
            bases = (ConfigBase,)
        cls = dataclasses.make_dataclass(_class_name(path), fields, bases=bases, frozen=True)
        cls.__module__ = __name__
        cls.__doc__ = sub.get("description", "")
        SECTION_CLASSES[path] = cls


_build_classes()
if TYPE_CHECKING:  # the classes are made from the schema at import time; a type checker sees what is not written down
    Config = Any
else:
    Config = SECTION_CLASSES[()]


def build_config(data: dict, env_refs: dict | None = None) -> Config:
    """Make the typed config from validated, defaults-filled data."""
    return _build(load_schema(), (), data, env_refs or {})


def _build(schema: dict, path: tuple, data: dict, env_refs: dict) -> Any:
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
