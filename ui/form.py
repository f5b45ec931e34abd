"""The form, derived from the JSON Schema: one field per leaf setting, no field list written anywhere else.

`fields(schema)` walks the schema and returns a FieldSpec per setting (titles,
descriptions, enums, bounds, defaults, the x-advanced flag). `to_document`
turns the form's values into config data; `from_config` turns a validated
config back into form values. Gradio is not imported here: app.py renders the
specs, and the tests check the round trip without a browser.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from trainer.patterns import get_path, set_path

GROUPS = {"model": "Model", "data": "Data", "training": "Training", "output": "Output", "backend": "Backend",
          "evaluation": "Evaluation", "logging": "Output", "resume": "Output", "distributed": "Backend"}


@dataclass(frozen=True)
class FieldSpec:
    path: tuple[str, ...]
    kind: str  # dropdown | checkbox | integer | number | text | list | multiselect | toggle | yaml
    title: str
    description: str
    default: Any
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    exclusive_minimum: bool = False  # the value must be above `minimum`, not at it (e.g. a learning rate)
    advanced: bool = False
    group: str = ""

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _types(node: dict) -> set[str]:
    kind = node.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


def fields(schema: dict) -> list[FieldSpec]:
    out: list[FieldSpec] = []
    _walk(schema, (), False, None, out)
    return out


def _walk(node: dict, path: tuple, advanced: bool, group: str | None, out: list[FieldSpec]) -> None:
    for name, sub in node.get("properties", {}).items():
        here = path + (name,)
        adv = advanced or bool(sub.get("x-advanced"))
        grp = group or GROUPS.get(name) or str(sub.get("title", name))  # a new top-level section gets its own group
        if "properties" in sub:
            if "null" in _types(sub):  # an optional section: a checkbox turns it on
                out.append(_spec(here, "toggle", sub, adv, grp, default=sub.get("default") is not None))
            _walk(sub, here, adv, grp, out)
        else:
            out.append(_spec(here, _kind(sub, _types(sub)), sub, adv, grp))


def _kind(node: dict, types: set[str]) -> str:
    if node.get("x-yaml"):  # a list of free-form objects (training.grpo.graders): written as YAML in a text box
        return "yaml"
    if "enum" in node:
        return "dropdown"
    if "anyOf" in node or "oneOf" in node:
        return "list"  # a keyword or a list of names (target_modules)
    if "array" in types:
        return "multiselect" if "enum" in node.get("items", {}) else "list"
    if "boolean" in types:
        return "checkbox"
    if "integer" in types:
        return "integer"
    if "number" in types:
        return "number"
    return "text"


def _spec(path: tuple, kind: str, node: dict, advanced: bool, group: str, default: Any = None) -> FieldSpec:
    choices: tuple = ()
    if kind == "dropdown":
        choices = tuple(node["enum"])
    elif kind == "multiselect":
        choices = tuple(node["items"]["enum"])
    elif kind == "list":  # keywords allowed instead of a list, e.g. all-linear
        choices = tuple(o["const"] for o in node.get("anyOf", node.get("oneOf", [])) if "const" in o)
    low = node.get("minimum", node.get("exclusiveMinimum"))
    return FieldSpec(
        path=path, kind=kind, title=str(node.get("title", path[-1])), description=str(node.get("description", "")),
        default=default if kind == "toggle" else node.get("default"), choices=choices, minimum=low,
        maximum=node.get("maximum"), nullable="null" in _types(node), exclusive_minimum="exclusiveMinimum" in node,
        advanced=advanced, group=group,
    )


# --- values <-> config -----------------------------------------------------------------------------------------------

def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value)


def to_document(specs: list[FieldSpec], values: list[Any]) -> dict:
    """Form values -> config data (what a YAML file would hold). Empty fields are left out (their default applies);
    an optional section whose checkbox is off is left out whole."""
    off = {s.path for s, v in zip(specs, values) if s.kind == "toggle" and not v}
    on = [s.path for s, v in zip(specs, values) if s.kind == "toggle" and v]
    data: dict = {}
    for path in on:
        set_path(data, path, {})
    for spec, value in zip(specs, values):
        if spec.kind == "toggle" or any(spec.path[: len(p)] == p for p in off) or _is_empty(value):
            continue
        set_path(data, spec.path, _typed(spec, value))
    return data


def _typed(spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if spec.kind in ("integer", "number") and isinstance(value, str):  # an optional number, typed as text (number_text)
        text = value.strip()
        try:
            return int(text) if spec.kind == "integer" or re.fullmatch(r"-?\d+", text) else float(text)
        except ValueError:
            return text  # the validator says what is wrong with it, beside its field
    if spec.kind == "list" and isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return parts[0] if len(parts) == 1 and parts[0] in spec.choices else parts
    if spec.kind in ("text", "dropdown") and isinstance(value, str):
        return value.strip()
    if spec.kind == "yaml" and isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # the validator says it is not a list, beside its field
    return value


def from_config(specs: list[FieldSpec], data: dict) -> list[Any]:
    """Normalised config data (Config.to_dict()) -> one form value per spec."""
    values: list[Any] = []
    for spec in specs:
        value = get_path(data, spec.path)
        if spec.kind == "toggle":
            values.append(value is not None)
        elif spec.kind == "list":
            values.append(value if isinstance(value, str) or value is None else ", ".join(value))
        elif spec.kind in ("text",) and value is None:
            values.append("")
        elif spec.kind == "yaml":
            values.append(yaml.safe_dump(value, sort_keys=False, allow_unicode=True) if value else "")
        elif spec.kind in ("integer", "number") and spec.nullable:
            values.append(number_text(value))
        else:
            values.append(value)
    return values


def number_text(value: Any) -> str:
    """An optional number as its box shows it: empty when unset. Such numbers are text boxes, because a number box
    cannot be empty: it shows 0 for null and sends 0 back with the next edit (a value the user never chose)."""
    if value is None:
        return ""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def differences(config: dict, defaults: dict, keep: tuple[tuple[str, ...], ...] = ()) -> dict:
    """What `config` sets unlike `defaults` (nested sections compared key by key), plus the `keep` keys whenever set: the
    short YAML people read, where the whole normalised config is 80 lines of defaults."""
    out: dict = {}
    for key, value in config.items():
        default = defaults.get(key, differences) if isinstance(defaults, dict) else differences  # a sentinel: no default
        kept = tuple(k[1:] for k in keep if k[0] == key)
        if isinstance(value, dict) and isinstance(default, dict):
            if inner := differences(value, default, kept):
                out[key] = inner
        elif value != default or (() in kept and value is not None):
            out[key] = value
    return out
