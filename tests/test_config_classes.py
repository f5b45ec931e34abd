"""The config classes in trainer/config/sections.py are written from schema.json; these tests keep the two in step."""
import ast
import copy
import dataclasses
import types
import typing

import pytest

from conftest import REPO
from trainer.config import load_config
from trainer.config.base import Section
from trainer.config.generate import COMMAND, TARGET, render
from trainer.config.schema import load_schema

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_sections_py_is_what_the_generator_writes_from_the_schema():
    assert TARGET.read_text(encoding="utf-8") == render(), f"trainer/config/sections.py differs from schema.json; run `{COMMAND}`"


def test_a_new_schema_field_changes_the_generated_classes():
    schema = copy.deepcopy(load_schema())
    schema["properties"]["training"]["properties"]["warmup_steps"] = {
        "title": "Warm-up steps", "description": "Steps of linear warm-up.", "type": ["integer", "null"], "default": None,
    }
    text = render(schema)
    assert text != render()
    assert '    warmup_steps: int | None\n    """Steps of linear warm-up. Default: null."""\n' in text


def _field_docs(text: str, class_name: str) -> dict[str, str]:
    """Each field's docstring (the string right after its declaration) in the class `class_name` of `text`."""
    (cls,) = [n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and n.name == class_name]
    docs = {}
    for declaration, after in zip(cls.body, cls.body[1:]):
        if isinstance(declaration, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[declaration.target.id] = " ".join(after.value.value.split())
    return docs


def test_every_field_carries_its_schema_description_even_with_quotes_and_backslashes():
    schema = copy.deepcopy(load_schema())
    tricky = 'A "quoted" word, a path C:\\runs\\x, three quotes """ inside, and a quote at the end: "x"'
    schema["properties"]["model"]["properties"]["revision"]["description"] = tricky
    docs = _field_docs(render(schema), "ModelConfig")
    assert docs["revision"] == tricky + " Default: null."
    for name, prop in load_schema()["properties"]["training"]["properties"].items():
        assert _field_docs(render(), "TrainingConfig")[name].startswith(" ".join(prop["description"].split())), name


def _conforms(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_conforms(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, type(None) if hint is None else hint)


def _check(section: Section, where: str) -> None:
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        assert _conforms(value, hints[f.name]), f"{where}.{f.name} = {value!r} is not {hints[f.name]}"
        if isinstance(value, Section):
            _check(value, f"{where}.{f.name}")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_value_of_a_shipped_config_has_its_declared_type(path, in_repo, tmp_path):
    starts_from_a_run = "\n  adapter: runs/" in path.read_text()  # as in test_config.py: a stand-in for the other run's adapter
    _check(load_config(str(path), [f"model.adapter={tmp_path}"] if starts_from_a_run else []), path.name)
