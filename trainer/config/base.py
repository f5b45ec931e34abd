"""What every config section can do: give back plain data, make a changed copy, and (the root) write YAML.

The section classes themselves are generated from schema.json into sections.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Self, cast

import yaml

from trainer.patterns import set_path


class Section:
    """Base of every generated section class."""

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(cast(Any, self)):  # every Section subclass is a dataclass
            if not f.compare:
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def replace(self, **changes: Any) -> Self:
        return cast(Self, dataclasses.replace(cast(Any, self), **changes))


class ConfigBase(Section):
    """The root: adds YAML output. `env_refs` remembers values written as ${VAR} so they are written back that way."""

    env_refs: dict[tuple, str]  # a field of the generated root class; named here for the type checker

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
