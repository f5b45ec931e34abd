"""From a grader object (YAML or JSON, OpenAI's shapes) to a typed grader, or every problem with it at once.

Each problem names the key path (`graders.correct.operation`), the file and line when the object came from a file,
what is allowed, and the fix. Unknown keys fail, with a "did you mean" for near misses; so do templates that do not
parse or read something other than item.* and sample.*, a text_similarity metric that cannot be computed here, a
python source that does not compile or defines no grade(), and a calculate_output naming no grader it has.
"""
from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

from trainer.config.yaml_loader import Document, dotted, read_text_file, read_yaml
from trainer.errors import Problem, UserError
from trainer.graders import builtin, formula, similarity
from trainer.graders.objects import STRING_CHECK_OPERATIONS, Builtin, Grader, Message, Multi, Python, ScoreModel, StringCheck, TextSimilarity
from trainer.graders.sandbox import MAX_SOURCE_BYTES
from trainer.graders.templates import template_problem

Path = tuple[Any, ...]

# every key each type accepts; the first group is required (trainer's own keys are documented in docs/graders.md)
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "string_check": (("operation", "input", "reference"), ("type", "name")),
    "text_similarity": (("evaluation_metric", "input", "reference"), ("type", "name", "pass_threshold")),
    "score_model": (("model", "input"), ("type", "name", "range", "sampling_params", "pass_threshold", "base_url", "api_key_env", "timeout")),
    "python": (("source",), ("type", "name", "pass_threshold", "image_tag", "timeout", "memory_mb")),
    "builtin": (("metric",), ("type", "name", "input", "reference", "schema")),
    "multi": (("graders", "calculate_output"), ("type", "name")),
}
_ROLES = ("system", "developer", "user", "assistant")


def load_grader(filename: str) -> Grader:
    """Read a grader object from a YAML or JSON file (JSON is YAML); UserError lists every problem with file:line."""
    doc = read_yaml(read_text_file(filename, "grader file"), filename)
    if doc.problems:
        raise UserError(doc.problems, title=f"{filename}: the grader file has problems:")
    if doc.data is None:
        raise UserError([Problem("the grader file is empty; it holds one grader object, e.g. {type: string_check, operation: eq, "
                                 "input: '{{ sample.output_text }}', reference: '{{ item.answer }}'}.", "", filename, 1)])
    return parse_grader(doc.data, doc)


def parse_grader(data: Any, doc: Document | None = None, path: Path = ()) -> Grader:
    """The typed grader of one grader object; `doc` gives lines when it came from a file, `path` where it sits in it."""
    reader = _Reader(doc)
    grader = reader.grader(data, tuple(path), "grader")
    if reader.problems or grader is None:
        where = f"{doc.file}: " if doc else ""
        raise UserError(reader.problems, title=f"{where}the grader has {len(reader.problems)} problem{'s' * (len(reader.problems) != 1)}:")
    return grader


def read_grader(data: Any, path: Path, default_name: str) -> tuple[Grader | None, list[tuple[Path, str]]]:
    """(the typed grader, or None; each problem as (key path, message)) of a grader object inside another document,
    such as a config's training.grpo.graders, whose reader places the problems at its own lines."""
    reader = _Reader(None)
    grader = reader.grader(data, tuple(path), default_name)
    return (None if reader.found else grader), reader.found


class _Reader:
    def __init__(self, doc: Document | None):
        self.doc = doc
        self.problems: list[Problem] = []
        self.found: list[tuple[Path, str]] = []  # the same problems, by key path
        self.missing: set[Path] = set()  # required keys already reported missing: their values are not judged again

    def problem(self, path: Path, message: str, key: bool = False) -> None:
        if path in self.missing:
            return
        self.found.append((path, message))
        self.problems.append(self.doc.problem(path, message, key) if self.doc else Problem(message, dotted(path)))

    def grader(self, data: Any, path: Path, default_name: str) -> Grader | None:
        if not isinstance(data, dict):
            self.problem(path, f"a grader is a section with a `type` ({', '.join(_KEYS)}), not {_kind(data)}.")
            return None
        kind = data.get("type")
        if kind not in _KEYS:
            if kind == "label_model":
                self.problem(path + ("type",), "label_model graders are not supported; use score_model, asking the model for a number.")
            elif kind is None:
                self.problem(path, f"the grader has no `type`; set one of {', '.join(_KEYS)}.")
            else:
                self.problem(path + ("type",), f"unknown grader type {kind!r}; the types are {', '.join(_KEYS)}.{_did_you_mean(kind, _KEYS)}")
            return None
        required, optional = _KEYS[kind]
        for key in data:
            if key not in required + optional:
                self.problem(path + (key,), f"{kind} graders have no key `{key}`; they take {', '.join(required + optional)}.{_did_you_mean(key, required + optional)}", key=True)
        missing = [key for key in required if key not in data]
        for key in missing:
            self.problem(path, f"{kind} graders need `{key}`.")
            self.missing.add(path + (key,))
        name = self.text(data, path, "name") if "name" in data else default_name
        built = _BUILDERS[kind](self, data, path, name or default_name)  # judges the keys that are there, missing or not
        return None if missing else built

    # one value each: the value when it is right, None (and a problem) when not
    def text(self, data: Mapping[str, Any], path: Path, key: str) -> str | None:
        value = data.get(key)
        if not isinstance(value, str):
            self.problem(path + (key,), f"`{key}` must be text, not {_kind(value)}.")
            return None
        return value

    def template(self, data: Mapping[str, Any], path: Path, key: str) -> str | None:
        value = self.text(data, path, key)
        problem = template_problem(value) if value is not None else None
        if problem:
            self.problem(path + (key,), problem)
            return None
        return value

    def choice(self, data: Mapping[str, Any], path: Path, key: str, options: tuple[str, ...]) -> str | None:
        value = data.get(key)
        if value not in options:
            self.problem(path + (key,), f"{_shown(value)} is not one of {', '.join(options)}.{_did_you_mean(value, options)}")
            return None
        return str(value)

    def number(self, data: Mapping[str, Any], path: Path, key: str, default: float, low: float = -math.inf, whole: bool = False) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low or whole and value != int(value):
            what = "a whole number" if whole else "a number"
            self.problem(path + (key,), f"`{key}` must be {what}{f' above {low:g}' if low > -math.inf else ''}, not {_shown(value)}.")
            return default
        return float(value)

    def threshold(self, data: Mapping[str, Any], path: Path) -> float | None:
        return self.number(data, path, "pass_threshold", 0.0) if "pass_threshold" in data else None


def _string_check(r: _Reader, data: Mapping[str, Any], path: Path, name: str) -> Grader | None:
    operation = r.choice(data, path, "operation", STRING_CHECK_OPERATIONS)
    text, reference = r.template(data, path, "input"), r.template(data, path, "reference")
    if operation is None or text is None or reference is None:
        return None
    return StringCheck(name, operation, text, reference)


def _text_similarity(r: _Reader, data: Mapping[str, Any], path: Path, name: str) -> Grader | None:
    metric = r.choice(data, path, "evaluation_metric", similarity.METRICS)
    if metric is not None and (why := similarity.unavailable(metric)):
        r.problem(path + ("evaluation_metric",), why)
        metric = None
    text, reference, threshold = r.template(data, path, "input"), r.template(data, path, "reference"), r.threshold(data, path)
    if metric is None or text is None or reference is None:
        return None
    return TextSimilarity(name, metric, text, reference, threshold)


def _score_model(r: _Reader, data: Mapping[str, Any], path: Path, name: str) -> Grader | None:
    from trainer.graders.model import SAMPLING_PARAMS

    model = r.text(data, path, "model")
    messages = _messages(r, data.get("input"), path + ("input",))
    bounds = (0.0, 1.0)
    if "range" in data:
        value = data["range"]
        if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and value[0] < value[1]):
            bounds = (float(value[0]), float(value[1]))
        else:
            r.problem(path + ("range",), f"`range` must be [low, high] with low < high, e.g. [0, 1], not {_shown(value)}.")
    params = data.get("sampling_params") or {}
    if not isinstance(params, dict):
        r.problem(path + ("sampling_params",), f"`sampling_params` must be a section, not {_kind(params)}.")
        params = {}
    for key in params:
        if key not in SAMPLING_PARAMS:
            r.problem(path + ("sampling_params", key), f"unknown sampling parameter; OpenAI's are {', '.join(SAMPLING_PARAMS)}.{_did_you_mean(key, SAMPLING_PARAMS)}", key=True)
    base_url = r.text(data, path, "base_url") if "base_url" in data else None
    key_env = r.text(data, path, "api_key_env") if "api_key_env" in data else None
    if base_url and not base_url.startswith(("http://", "https://")):
        r.problem(path + ("base_url",), f"`base_url` must be an http(s) URL such as http://127.0.0.1:8000/v1, not {base_url!r}.")
    timeout = r.number(data, path, "timeout", ScoreModel.timeout, low=0)
    if model is None or messages is None:
        return None
    return ScoreModel(name, model, messages, bounds, dict(params), r.threshold(data, path), base_url, key_env, timeout)


def _messages(r: _Reader, value: Any, path: Path) -> tuple[Message, ...] | None:
    if not isinstance(value, list) or not value:
        r.problem(path, "`input` must be a list of messages, e.g. [{role: user, content: 'Grade {{ sample.output_text }} ...'}].")
        return None
    messages = []
    for i, message in enumerate(value):
        where = path + (i,)
        if not isinstance(message, dict):
            r.problem(where, f"a message is a section with role and content, not {_kind(message)}.")
            continue
        for key in message:
            if key not in ("role", "content", "type"):
                r.problem(where + (key,), f"a message has role, content and type (message), not `{key}`.{_did_you_mean(key, ('role', 'content', 'type'))}", key=True)
        if message.get("type", "message") != "message":
            r.problem(where + ("type",), f"a message's type is `message`, not {_shown(message.get('type'))}.")
        role = r.choice(message, where, "role", _ROLES)
        content = message.get("content")
        if isinstance(content, dict) and content.get("type") in ("input_text", "output_text") and isinstance(content.get("text"), str):
            content = content["text"]  # OpenAI's {type: input_text, text: ...}: only text is graded here
        if not isinstance(content, str):
            r.problem(where + ("content",), f"`content` must be text (a template), not {_kind(content)}; images and audio are not supported.")
            continue
        problem = template_problem(content)
        if problem:
            r.problem(where + ("content",), problem)
        elif role is not None:
            messages.append(Message(role, content))
    return tuple(messages) if len(messages) == len(value) else None


def _python(r: _Reader, data: Mapping[str, Any], path: Path, name: str) -> Grader | None:
    source = r.text(data, path, "source")
    timeout = r.number(data, path, "timeout", Python.timeout, low=0)
    memory = r.number(data, path, "memory_mb", Python.memory_mb, low=63, whole=True)
    image_tag = r.text(data, path, "image_tag") if "image_tag" in data else None
    if source is None:
        return None
    if len(source.encode()) > MAX_SOURCE_BYTES:
        r.problem(path + ("source",), f"the source is {len(source.encode()) // 1000} kB; a python grader's source is at most {MAX_SOURCE_BYTES // 1000} kB (OpenAI's limit).")
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        r.problem(path + ("source",), f"the source does not compile: {exc.msg} (line {exc.lineno} of the source).")
        return None
    if not any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "grade" for node in tree.body):
        r.problem(path + ("source",), "the source defines no function `grade`; write def grade(sample, item) -> float: ...")
        return None
    return Python(name, source, r.threshold(data, path), image_tag, timeout, int(memory))


def _builtin(r: _Reader, data: Mapping[str, Any], path: Path, name: str) -> Grader | None:
    metric = r.choice(data, path, "metric", tuple(builtin.BUILTINS))
    text = r.template(data, path, "input") if "input" in data else Builtin.input
    reference = r.template(data, path, "reference") if "reference" in data else None
    schema = data.get("schema")
    if metric in builtin.NEEDS_REFERENCE and "reference" not in data:
        r.problem(path, f"the {metric} grader needs `reference`, the expected answer, e.g. reference: '{{{{ item.answer }}}}'.")
        return None
    if metric == "json_schema" and (problem := builtin.schema_problem(schema)):
        r.problem(path + ("schema",), problem)
        return None
    if metric != "json_schema" and "schema" in data:
        r.problem(path + ("schema",), "`schema` belongs to the json_schema metric only; remove it.", key=True)
    if metric is None or text is None:
        return None
    return Builtin(name, metric, text, reference, schema)


def _multi(r: _Reader, data: Mapping[str, Any], path: Path, name: str) -> Grader | None:
    graders_data, calculation = data.get("graders"), r.text(data, path, "calculate_output")
    if not isinstance(graders_data, dict) or not graders_data:
        r.problem(path + ("graders",), f"`graders` must be a section of named graders (name: {{type: ...}}), not {_kind(graders_data)}.")
        return None
    graders: dict[str, Grader] = {}
    for key, value in graders_data.items():
        if not str(key).isidentifier():
            r.problem(path + ("graders", key), f"the grader name {key!r} must be a plain name (letters, digits, _) so that calculate_output can use it.", key=True)
        sub = r.grader(value, path + ("graders", key), str(key))
        if sub is not None:
            graders[str(key)] = sub
    if calculation is not None:
        for problem in formula.formula_problems(calculation, graders_data):
            r.problem(path + ("calculate_output",), problem)
    if calculation is None or len(graders) != len(graders_data):
        return None
    return Multi(name, graders, calculation)


_BUILDERS: dict[str, Callable[[_Reader, Mapping[str, Any], Path, str], Grader | None]] = {
    "string_check": _string_check, "text_similarity": _text_similarity, "score_model": _score_model, "python": _python,
    "builtin": _builtin, "multi": _multi,
}


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a section"
    if isinstance(value, list):
        return "a list"
    return "empty" if value is None else f"{type(value).__name__} {_shown(value)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: Any, options: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6) if isinstance(word, str) else []
    return f" Did you mean `{close[0]}`?" if close else ""
