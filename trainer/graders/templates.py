"""The `{{ item.x }}` / `{{ sample.output_text }}` templates of grader inputs, rendered by Jinja2.

OpenAI's grader templates name a namespace and a variable, `{{ namespace.variable }}`, with nested keys reached
JSON-path-like (`{{ sample.output_json.answer.0 }}`); the namespaces are `item` (the data line) and `sample` (the
model's output: output_text, output_json, output_tools, choices). Jinja2 reads that syntax as it is. It runs in its
sandbox (a template cannot reach Python attributes or call methods it should not) with StrictUndefined, so a field the
data lacks is an error naming the field, never an empty string. A `.name` on a mapping is always the key `name` (a
field called `items` or `keys` is the field, not the dict's method). A value that is a list, a mapping, a boolean or
null is written as JSON (`["a", "b"]`, `true`), the way a reference answer stored as JSON in the data reads.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")  # what OpenAI's sample namespace holds

FieldPath = tuple[Any, ...]  # ("item", "answer", 0): a namespace and the keys below it


class TemplateFailed(Exception):
    """A template could not be rendered for one line: the message names the field."""


def _as_text(value: Any) -> Any:
    if isinstance(value, (Mapping, list, tuple, bool)) or value is None:
        return json.dumps(value, ensure_ascii=False)
    return value


class _Environment(SandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):  # JSON data: `.x` is the key x, never a method of dict
            return obj[attribute] if attribute in obj else self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


_ENV = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_as_text)


@lru_cache(maxsize=512)
def _compiled(text: str) -> Template:
    return _ENV.from_string(text)


def template_problem(text: str) -> str | None:
    """What is wrong with a template before any data meets it (syntax, a namespace or sample field that does not exist), or None."""
    try:
        tree = _ENV.parse(text)
    except TemplateSyntaxError as exc:
        return f"the template does not parse: {exc.message} (line {exc.lineno} of the template). Write fields as {{{{ item.name }}}} or {{{{ sample.output_text }}}}."
    unknown = sorted(meta.find_undeclared_variables(tree) - set(NAMESPACES))
    if unknown:
        return (f"the template reads {', '.join(unknown)}: a template reads only item.<field> (the data line) and sample.<field> "
                f"(the model's output: {', '.join(SAMPLE_FIELDS)}), e.g. {{{{ item.{unknown[0]} }}}}.")
    for path in _paths(tree):
        if path[0] == "sample" and len(path) > 1 and path[1] not in SAMPLE_FIELDS:
            return f"the template reads sample.{path[1]}: a sample has {', '.join(SAMPLE_FIELDS)}."
    return None


def paths_read(text: str) -> set[FieldPath]:
    """The item/sample paths a (valid) template reads, e.g. {("item", "answer"), ("sample", "output_text")}; a key chosen at
    render time (item.x[sample.k]) ends its path where it is."""
    return set(_paths(_ENV.parse(text)))


def _paths(node: nodes.Node) -> Iterator[FieldPath]:
    if isinstance(node, (nodes.Getattr, nodes.Getitem, nodes.Name)):
        chain: list[nodes.Getattr | nodes.Getitem] = []
        base: nodes.Node = node
        while isinstance(base, (nodes.Getattr, nodes.Getitem)):
            chain.append(base)
            base = base.node
        if isinstance(base, nodes.Name) and base.name in NAMESPACES:
            path: list[Any] = [base.name]
            for link in reversed(chain):
                if isinstance(link, nodes.Getattr):
                    path.append(link.attr)
                elif isinstance(link.arg, nodes.Const):
                    path.append(link.arg.value)
                else:
                    break
            yield tuple(path)
        for link in chain:  # a computed key is an expression of its own
            if isinstance(link, nodes.Getitem) and not isinstance(link.arg, nodes.Const):
                yield from _paths(link.arg)
        return
    for child in node.iter_child_nodes():
        yield from _paths(child)


def render(text: str, sample: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    """The template filled from one line; TemplateFailed names the first field the line lacks."""
    try:
        return _compiled(text).render(item=item, sample=sample)
    except UndefinedError:
        raise TemplateFailed(_missing_field(text, {"item": item, "sample": sample})) from None
    except Exception as exc:  # the sandbox refusing an attribute, a filter meeting the wrong type: this line fails, not the run
        raise TemplateFailed(f"the template {text!r} failed for this line: {type(exc).__name__}: {exc}") from None


def _missing_field(text: str, values: Mapping[str, Any]) -> str:
    for path in sorted(paths_read(text), key=str):
        value: Any = values
        for depth, key in enumerate(path):
            if isinstance(value, Mapping) and key in value:
                value = value[key]
            elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
                value = value[key]
            else:
                where = ".".join(map(str, path[:depth])) or "the line"
                have = f" (it has: {', '.join(map(str, value))})" if isinstance(value, Mapping) and value else ""
                if path[:2] == ("sample", "output_json") and depth == 1:
                    return "sample.output_json: the model's output is not JSON, so a template reading sample.output_json has nothing to read."
                return f"{'.'.join(map(str, path))}: {where} has no {key!r}{have}. Add it to the data, or read a field that is there."
    return "a field the template reads is missing from this line."
