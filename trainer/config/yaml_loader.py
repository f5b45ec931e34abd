"""Read a YAML config strictly, keeping the line and column of every value.

PyYAML's own loaders keep the last of two duplicate keys without a word, build
Python objects from tags, and expand nested aliases until memory runs out. We
let PyYAML only *compose* the node graph (which is cheap and shares aliased
nodes) and build plain data from it ourselves, so that each of those becomes a
reported problem instead.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, cast

import yaml

from trainer.errors import Problem, UserError

Path = tuple  # a config path such as ("training", "learning_rate") or ("x", 0)

MAX_FILE_BYTES = 1_000_000  # a config is a few KB; anything this big is a mistake
MAX_VALUES = 100_000  # more values than this means nested aliases (a "billion laughs" bomb)
MAX_DEPTH = 64

_YAML_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_YAML_TAG}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_ESCAPE = "$${"


@dataclass
class Document:
    """Plain data read from YAML, with where each value came from."""

    data: Any
    file: str
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)  # value positions
    key_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)  # key positions
    env_refs: dict[Path, str] = field(default_factory=dict)  # original text of values with ${VAR}
    problems: list = field(default_factory=list)  # problems found while reading (duplicate keys, ...)
    overridden: set = field(default_factory=set)  # paths set on the command line with --set
    aliases: dict[Path, str] = field(default_factory=dict)  # how the user's file named a translated key
    unset_env: dict[Path, list[Problem]] = field(default_factory=dict)  # the problems of values whose ${VAR} is not set

    def mark(self, path: Path, key: bool = False) -> tuple[int, int] | None:
        """The position of `path`, or of its nearest ancestor that has one."""
        table = self.key_marks if key else self.marks
        path = tuple(path)
        while path:
            if path in table:
                return table[path]
            if key and path in self.marks:
                return self.marks[path]
            path = path[:-1]
            key = False
            table = self.marks
        return self.marks.get(())

    def problem(self, path: Path, message: str, key: bool = False) -> Problem:
        if tuple(path) in self.overridden:
            return Problem(message, dotted(path), "--set")
        line, column = self.mark(path, key) or (None, None)
        name = dotted(path)
        if tuple(path) in self.aliases:
            name = f"{self.aliases[tuple(path)]} (trainer: {name})"
        return Problem(message, name, self.file, line, column)


class _Fatal(Exception):
    """The document cannot be read any further."""

    def __init__(self, message: str, mark: tuple[int, int] | None = None):
        super().__init__(message)
        self.message = message
        self.mark = mark


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_text_file(filename: str, what: str = "config file") -> str:
    """Read a small UTF-8 text file, turning every way it can be wrong into a UserError."""
    if not os.path.exists(filename):
        raise UserError(f"{filename}: no such {what}. Check the path (relative paths start from {os.getcwd()}).")
    if os.path.isdir(filename):
        raise UserError(f"{filename}: is a directory, not a {what}. Give the path of the .yaml file.")
    size = os.path.getsize(filename)
    if size > MAX_FILE_BYTES:
        raise UserError(
            f"{filename}: the file is {size / 1e6:.1f} MB; a {what} is a few KB. "
            "Did you pass a data file? Data files go under data.train in the config."
        )
    try:
        with open(filename, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise UserError(f"{filename}: cannot be read ({exc.strerror}).") from None
    if b"\x00" in raw:
        raise UserError(f"{filename}: this is a binary file, not a YAML {what}.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{filename}:{line}: the file is not UTF-8 text (byte {exc.start}). Save it as UTF-8.") from None


def read_yaml(text: str, file: str) -> Document:
    """Parse `text` into a Document. Unreadable YAML raises UserError; softer problems are collected."""
    doc = Document(data=None, file=file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # the pure-Python composer: recursion is bounded
        if node is not None:
            doc.data = _Builder(doc).build(node, (), 0)
    except _Fatal as exc:
        line, column = exc.mark or (None, None)
        raise UserError([Problem(exc.message, "", file, line, column)]) from None
    except yaml.MarkedYAMLError as exc:
        raise UserError([_syntax_problem(exc, text, file)]) from None
    except yaml.YAMLError as exc:
        raise UserError([Problem(f"not valid YAML: {exc}", "", file)]) from None
    except RecursionError:
        raise UserError([Problem(f"the YAML is nested too deeply (a config needs fewer than {MAX_DEPTH} levels).", "", file)]) from None
    return doc


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str, file: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    column = mark.column + 1 if mark else None
    what = exc.problem or "syntax error"
    message = f"not valid YAML: {what}"
    if exc.context:
        message += f" ({exc.context})"
    source_line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
    if "\t" in what or "\t" in source_line[: (mark.column + 1 if mark else 0)]:
        message += ". YAML does not allow tabs for indentation: indent with spaces."
    elif "expected a single document" in what or "but found another document" in message:
        message += ". A config is one YAML document: remove the extra '---'."
    elif "mapping values are not allowed" in what:
        message += ". Check the indentation, and quote values that contain ': '."
    else:
        message += ". Check the indentation and quoting around this line."
    return Problem(message, "", file, line, column)


class _Builder:
    def __init__(self, doc: Document):
        self.doc = doc
        self.values = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Fatal(
                f"the YAML expands to more than {MAX_VALUES} values, which happens with nested aliases "
                "(an 'alias bomb'). A config needs no aliases of aliases: write the values out.",
                _pos(node),
            )
        if depth > MAX_DEPTH:
            raise _Fatal(f"the YAML is nested too deeply (a config needs fewer than {MAX_DEPTH} levels).", _pos(node))
        self.doc.marks.setdefault(path, _pos(node))
        if isinstance(node, yaml.MappingNode):
            if node.tag != f"{_YAML_TAG}map":
                raise _tag_refused(node)
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != f"{_YAML_TAG}seq":
                raise _tag_refused(node)
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(cast(yaml.ScalarNode, node), path)  # a YAML node is a mapping, a sequence or a scalar

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        out: dict[str, Any] = {}
        seen: dict[str, tuple[int, int]] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == f"{_YAML_TAG}merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise _Fatal("'<<' merges only sections (mappings).", _pos(source))
                    for k, v in self._mapping(source, path, depth + 1).items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Fatal("a key must be a plain name, not a list or a section.", _pos(key_node))
            key = str(key_node.value)
            child = path + (key,)
            if key in seen:
                first_line = seen[key][0]
                self.doc.problems.append(
                    self.doc_problem(
                        child,
                        f"the key `{key}` appears twice (lines {first_line} and {_pos(key_node)[0]}); YAML would "
                        "silently keep only the last one. Remove one of them.",
                        _pos(key_node),
                    )
                )
            seen[key] = _pos(key_node)
            self.doc.key_marks[child] = _pos(key_node)
            self.doc.marks[child] = _pos(value_node)
            out[key] = self.build(value_node, child, depth + 1)
        for key, value in merged.items():
            out.setdefault(key, value)
        return out

    def doc_problem(self, path: Path, message: str, pos: tuple[int, int]) -> Problem:
        return Problem(message, dotted(path), self.doc.file, pos[0], pos[1])

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise _tag_refused(node)
        if node.tag == f"{_YAML_TAG}timestamp":
            return node.value  # a date is just text to us
        if node.tag in (f"{_YAML_TAG}int", f"{_YAML_TAG}float") and ":" in node.value:
            return node.value  # YAML 1.1's base 60 (2:4 is 124), dropped by YAML 1.2: distributed.nodes' min:max means text
        value = self.constructor.construct_object(node)
        if isinstance(value, str) and "${" in value:
            value = self._expand_env(value, node, path)
        return value

    def _expand_env(self, text: str, node: yaml.ScalarNode, path: Path) -> Any:
        missing = []

        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        parts = text.split(_ENV_ESCAPE)
        expanded = "${".join(_ENV_REF.sub(substitute, part) for part in parts)
        for name in missing:
            problem = self.doc_problem(path, f"the environment variable {name} is not set. Set it, or give a default: ${{{name}:-value}}.", _pos(node))
            self.doc.problems.append(problem)
            self.doc.unset_env.setdefault(path, []).append(problem)
        if expanded == text.replace(_ENV_ESCAPE, "${"):
            return expanded
        self.doc.env_refs[path] = text
        if node.style is None:  # a plain scalar such as ${BATCH:-4} means a number when it reads as one
            try:
                typed = yaml.safe_load(expanded)
            except yaml.YAMLError:
                typed = expanded
            if isinstance(typed, (bool, int, float)) or typed is None:
                return typed
        return expanded


def _tag_refused(node: yaml.Node) -> _Fatal:
    tag = node.tag.replace(_YAML_TAG, "!!")
    return _Fatal(
        f"the tag {tag} is not allowed: a config holds plain values, lists and sections "
        "(tags such as !!python/object could run code, so they are refused). Remove the tag.",
        _pos(node),
    )


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1
