"""Tool calls in a model's answer, and the tool_call_match metric.

A model trained on a template writes its calls the way the template lays them out; parse_tool_calls reads
the common layouts back: Hermes/Qwen (<tool_call>{"name": ..., "arguments": ...}</tool_call>), Mistral
([TOOL_CALLS][{...}]) and Llama 3.x (a bare {"name": ..., "parameters": ...} object). hermes_calls is the one
reader of the Hermes layout: the metric uses it here, and `trainer serve` turns its calls into OpenAI's tool_calls.
Hand-written: the parsers that exist (vLLM's, transformers' response schemas) come with a server or need a
schema the tokenizer ships, and these few lines are all the layouts need.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from trainer.errors import UserError

# The last call may be unclosed: the answer ended (max_new_tokens) inside it.
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class ToolCall(TypedDict):
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class HermesBlock:
    """One <tool_call>...</tool_call> of an answer: where it is in the text, and its call (None: not a well-formed call)."""
    start: int
    end: int
    call: ToolCall | None


def _call(value: object) -> ToolCall | None:
    """{"name": str, "arguments": dict} from one decoded call object, or None if it is not one."""
    if not isinstance(value, dict):
        return None
    function = value.get("function")
    if isinstance(function, dict):  # OpenAI's {"type": "function", "function": {...}}
        value = function
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


def _decoded(body: str) -> ToolCall | None:
    try:
        return _call(json.loads(body))
    except json.JSONDecodeError:
        return None


def hermes_calls(text: str) -> list[HermesBlock]:
    """Every Hermes/Qwen-style `<tool_call>{"name": ..., "arguments": ...}</tool_call>` in text, in order, decoded."""
    return [HermesBlock(match.start(), match.end(), _decoded(match.group(1))) for match in _HERMES.finditer(text)]


def parse_tool_calls(text: str) -> list[ToolCall] | None:
    """The calls in an answer, [] when it makes none, or None when it tries to call but the call is malformed."""
    text = text.strip()
    if "<tool_call>" in text:
        hermes = [block.call for block in hermes_calls(text)]
        calls = [call for call in hermes if call is not None]
        return calls if len(calls) == len(hermes) else None
    if text.startswith("[TOOL_CALLS]"):
        text = text[len("[TOOL_CALLS]") :].strip()
    if text[:1] in "[{":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        values = value if isinstance(value, list) else [value]
        calls = [call for call in map(_call, values) if call is not None]
        return calls if values and len(calls) == len(values) else None
    return []


def reference_calls(reference: str) -> list[ToolCall] | None:
    """A reference answer written as a JSON list of calls (evaluation cases of tool-calling data), else None."""
    try:
        value = json.loads(reference)
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(value, list):
        return None
    calls = [call for call in map(_call, value) if call is not None]
    return calls if value and len(calls) == len(value) else None


def _same(calls: list[ToolCall], expected: list[ToolCall]) -> bool:
    """The same functions with equal arguments (JSON equality: key order ignored), in any order."""
    def key(c: ToolCall) -> tuple[str, str]:
        return (c["name"], json.dumps(c["arguments"], sort_keys=True))

    return sorted(map(key, calls)) == sorted(map(key, expected))


def tool_call_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """tool_call_match: the share of cases answered right: where a call is expected, the same function(s) with equal
    arguments; where a text answer is expected, no call. tool_call_wellformed: of the cases expecting a call, the share
    whose answer is a well-formed call (whatever it calls)."""
    right: list[float] = []
    wellformed = expected_calls = 0
    for prediction, reference in zip(predictions, references):
        got, want = parse_tool_calls(prediction), reference_calls(reference)
        if want is None:
            right.append(float(got == []))
            continue
        expected_calls += 1
        if got:
            wellformed += 1
            right.append(float(_same(got, want)))
        else:
            right.append(0.0)
    return {"tool_call_match": sum(right) / len(right) if right else 0.0,
            "tool_call_wellformed": wellformed / expected_calls if expected_calls else 0.0}


def load_tools(path: str) -> list[dict[str, Any]]:
    """A JSON file with a list of tools (OpenAI's {"type": "function", "function": {...}}, or bare function definitions)."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except OSError as exc:
        raise UserError(f"--tools: cannot read {path}: {exc.strerror}.") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); --tools needs a JSON list of function definitions.") from None
    if isinstance(value, dict) and isinstance(value.get("tools"), list):
        value = value["tools"]
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}: --tools needs a non-empty JSON list of tools, e.g. "
                        '[{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}].')
    tools = []
    for i, tool in enumerate(value):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UserError(f"{path}: tool {i + 1} must be a function definition with a 'name'.")
        tools.append({"type": "function", "function": function})
    return tools
