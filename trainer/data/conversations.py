"""Chat records (OpenAI messages, ShareGPT conversations) into Messages, with every field OpenAI's
chat fine-tuning format allows: tools, tool calls, tool results, legacy functions, text parts,
weights and reasoning. A bad shape is a problem with its message number and the fix, never a traceback.

OpenAI                                    becomes
------------------------------------------------------------------------------------------
tools: [{type: function, function}]       Example.tools (passed as apply_chat_template(tools=...))
functions: [{name, parameters}] (legacy)  Example.tools, each wrapped as {type: function, function}
assistant tool_calls (content null)       Message.tool_calls (arguments parsed from their JSON text)
assistant function_call (legacy)          Message.tool_calls with one call
tool (tool_call_id) / function (legacy)   Message(role="tool"), answering the call it names
content: [{type: text, text}]             the texts joined with newlines
reasoning_content (or thinking, gpt-oss's   Message.reasoning
name for it), or <think>...</think>
developer                                 system
ShareGPT function_call / observation      assistant tool call / tool result; a `tools` column as tools
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trainer.data.records import Record
from trainer.errors import Problem

OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool", "developer": "system", "function": "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
MESSAGE_KEYS = {"role", "content", "weight", "name", "tool_calls", "tool_call_id", "function_call", "reasoning_content", "thinking", "refusal"}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict  # the parsed JSON object
    id: str  # from the data, or made up (call00001, ...) where the data has none


@dataclass(frozen=True)
class Message:
    role: str  # system, user, assistant or tool
    content: str  # "" for an assistant message that only calls tools
    trained: bool  # in the loss when train_on is assistant (assistant turns without weight: 0)
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None  # reasoning_content, or a leading <think> block of the content
    name: str | None = None  # a message's name; for a tool result, the function that produced it
    tool_call_id: str | None = None  # a tool result: the call it answers


@dataclass(frozen=True)
class Example:
    """One training example, as every format becomes: a conversation (chat formats) or a text (the text format)."""

    messages: tuple[Message, ...] | None  # chat formats
    text: str | None  # the text format
    file: str
    line: int
    tools: tuple[dict, ...] | None = None  # the functions the example offers, as apply_chat_template(tools=...) takes them


def parse_tools(record: Record, value: Any, column: str) -> tuple[tuple[dict, ...] | None, list[Problem]]:
    """The example's tools in the form chat templates expect: [{"type": "function", "function": {...}}]."""
    if value is None or value == "" or value == []:
        return None, []
    if isinstance(value, str):  # ShareGPT data sets often keep the tools as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return None, [record.problem(f"the {column!r} column is text but not JSON ({exc.msg} at column {exc.pos + 1}); "
                                         "write the tools as a JSON list of function definitions.")]
    if not isinstance(value, list):
        return None, [record.problem(f"{column!r} must be a list of tools, got {_short(value)}.")]
    tools, problems = [], []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" and "function" in tool else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.append(record.problem(f"{column} item {i + 1} must be a function definition with a 'name' "
                                           f"({{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": {{...}}}}}}), got {_short(tool)}."))
            continue
        if "parameters" in function and not isinstance(function["parameters"], dict):
            problems.append(record.problem(f"{column} item {i + 1} ({function['name']}): 'parameters' must be a JSON Schema object, "
                                           f"got {_short(function['parameters'])}."))
            continue
        tools.append({"type": "function", "function": function})
    return tuple(tools), problems


def parse_arguments(value: Any) -> tuple[dict | None, str | None]:
    """Tool-call arguments as an object: OpenAI writes them as JSON text, others as the object itself."""
    if isinstance(value, dict):
        return value, None
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"are not valid JSON ({exc.msg} at column {exc.pos + 1})"
        if isinstance(parsed, dict):
            return parsed, None
        return None, f"must be a JSON object, got {_short(parsed)}"
    return None, f"must be a JSON object (or its JSON text), got {_short(value)}"


def content_text(value: Any) -> tuple[str | None, str | None]:
    """A message's content as text: a string, or OpenAI's list of text parts. (text, why not)."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind is not None:
                return None, (f"part {i + 1} has type {kind!r}; only text parts can be trained here. "
                              "Remove it, or describe it in a text part")
            else:
                return None, f"part {i + 1} must be {{\"type\": \"text\", \"text\": ...}}, got {_short(part)}"
        return "\n".join(texts), None
    return None, None


def split_reasoning(text: str) -> tuple[str | None, str]:
    """A leading <think>...</think> block: (reasoning, the answer after it)."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN) or THINK_CLOSE not in stripped:
        return None, text
    inner, _, rest = stripped[len(THINK_OPEN):].partition(THINK_CLOSE)
    return inner.strip("\n"), rest.lstrip("\n")


def _tool_calls(record: Record, where: str, turn: dict, fmt: str, content_key: str, counter: list[int]) -> tuple[list, list[Problem]]:
    """The calls of one assistant message, each (name, arguments, id)."""
    if fmt == "sharegpt":  # {"from": "function_call", "value": "{\"name\": ..., \"arguments\": ...}"} (or a list of them)
        raw, why = turn.get(content_key), None
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            return [], [record.problem(f"{where} (function_call) must hold the call as JSON ({exc.msg} at column {exc.pos + 1}): "
                                       '{"name": ..., "arguments": {...}}.')]
        entries: Any = [{"function": v} for v in (value if isinstance(value, list) else [value])]
    else:
        entries = turn.get("tool_calls")
        if entries is None and turn.get("function_call") is not None:
            entries = [{"function": turn["function_call"]}]
        if not isinstance(entries, list) or not entries:
            return [], [record.problem(f"{where} 'tool_calls' must be a non-empty list of calls, got {_short(entries)}.")]
    calls, problems = [], []
    for k, entry in enumerate(entries):
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.append(record.problem(f"{where} tool call {k + 1} must be {{\"id\": ..., \"type\": \"function\", \"function\": "
                                           f"{{\"name\": ..., \"arguments\": \"{{...}}\"}}}}, got {_short(entry)}."))
            continue
        arguments, why = parse_arguments(function.get("arguments", {}))
        if why or arguments is None:
            problems.append(record.problem(f"{where} tool call {k + 1} ({function['name']}): the arguments {why}; "
                                           "write them as a JSON object, e.g. \"{\\\"city\\\": \\\"Paris\\\"}\"."))
            continue
        counter[0] += 1
        given = entry.get("id")
        call_id = given if isinstance(given, str) and given else f"call{counter[0]:05d}"
        calls.append(ToolCall(function["name"], arguments, call_id))
    return calls, problems


@dataclass
class _Reading:
    """What reading one conversation carries from message to message."""

    record: Record
    fmt: str
    names: dict
    open_calls: dict[str, str] = field(default_factory=dict)  # id -> function name of calls not yet answered
    pending: list[str] = field(default_factory=list)  # ids in the order they were made, for results that name no id
    counter: list[int] = field(default_factory=lambda: [0])  # calls made so far (ids for calls that have none)


def chat_messages(record: Record, fmt: str, names: dict) -> tuple[list, list[Problem]]:
    """The record's messages, or the problems that stop it from being a conversation."""
    turns = record.row.get(names["messages"])
    if turns is None:
        return [], [record.problem(f"missing the {names['messages']!r} column; each example needs its list of messages.")]
    if not isinstance(turns, list) or not turns:
        return [], [record.problem(f"{names['messages']!r} must be a non-empty list of messages, got {_short(turns)}.")]
    reading = _Reading(record, fmt, names)
    messages, problems = [], []
    for i, turn in enumerate(turns):
        message, found = _message(reading, f"message {i + 1}", turn)
        problems += found
        if message is not None:
            messages.append(message)
    return messages, problems


def _message(reading: _Reading, where: str, turn: Any) -> tuple[Any, list[Problem]]:
    """One turn as a Message (or None) and the problems found in it."""
    record, fmt, names = reading.record, reading.fmt, reading.names
    role_key, content_key = names["role"], names["content"]
    if not isinstance(turn, dict):
        return None, [record.problem(f"{where} must be an object with {role_key!r} and {content_key!r}, got {_short(turn)}.")]
    problems = []
    unknown = sorted(set(turn) - ({role_key, content_key} | MESSAGE_KEYS))
    if unknown:
        problems.append(record.problem(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; a message has {role_key!r}, "
                                       f"{content_key!r} and optionally 'name', 'weight', 'tool_calls', 'tool_call_id', 'reasoning_content'."))
    roles = SHAREGPT_ROLES if fmt == "sharegpt" else OPENAI_ROLES
    raw_role = turn.get(role_key)
    role = roles.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        return None, problems + [record.problem(f"{where} has unknown role {_short(raw_role)}; use one of: {', '.join(roles)}.")]
    weight = turn.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        problems.append(record.problem(f"{where} weight must be 0 or 1, got {_short(weight)}."))
    calls: list = []
    is_call = role == "assistant" and (turn.get("tool_calls") is not None or turn.get("function_call") is not None
                                       or (fmt == "sharegpt" and raw_role == "function_call"))
    if is_call:
        calls, found = _tool_calls(record, where, turn, fmt, content_key, reading.counter)
        problems += found
        for call in calls:
            reading.open_calls[call.id] = call.name
            reading.pending.append(call.id)
    raw_content = None if is_call and fmt == "sharegpt" else turn.get(content_key)
    text, reasoning, why = _content_and_reasoning(where, turn, role, raw_content, content_key, is_call)
    if why:
        return None, problems + [record.problem(why)]
    if not text.strip() and not calls and not (role == "assistant" and reasoning):
        return None, problems + [record.problem(f"{where} ({raw_role}) has empty {content_key!r}.")]
    if role == "tool":
        answered, why = _answered_call(reading, where, turn)
        if answered is None:
            return None, problems + [record.problem(why)]
        call_id, name = answered
        return Message("tool", text, False, name=name, tool_call_id=call_id), problems
    speaker = turn.get("name") if isinstance(turn.get("name"), str) else None
    return Message(role, text, role == "assistant" and weight != 0, tuple(calls), reasoning or None, speaker), problems


def _content_and_reasoning(where: str, turn: dict, role: str, raw_content: Any, content_key: str,
                           is_call: bool) -> tuple[str, str | None, str | None]:
    """(text, reasoning, None), or ("", None, why) when the content or the reasoning is not text."""
    text, why = content_text(raw_content)
    if why:
        return "", None, f"{where} {content_key!r}: {why}."
    if text is None and not (is_call and raw_content is None):
        return "", None, f"{where} {content_key!r} must be text, got {_short(raw_content)}."
    text = text or ""
    field = "reasoning_content" if turn.get("reasoning_content") is not None else "thinking"  # gpt-oss's data (and its template) say thinking
    reasoning = turn.get(field)
    if reasoning is not None and not isinstance(reasoning, str):
        return "", None, f"{where} {field!r} must be text, got {_short(reasoning)}."
    if role == "assistant" and reasoning is None:
        reasoning, text = split_reasoning(text)
    return text, reasoning, None


def _answered_call(reading: _Reading, where: str, turn: dict) -> tuple[tuple[str, str] | None, str]:
    """The (id, function name) of the open call a tool result answers, or (None, why)."""
    call_id = turn.get("tool_call_id")
    if call_id is None and reading.pending:  # ShareGPT observations and legacy function results answer the oldest open call
        call_id = reading.pending[0]
    if not isinstance(call_id, str) or call_id not in reading.open_calls:
        asked = f" (tool_call_id {call_id!r})" if call_id is not None else ""
        return None, (f"{where} is a tool result{asked} that answers no call: put it after the assistant message whose tool_calls "
                      "has a call with that id, and give it that call's 'tool_call_id'.")
    reading.pending.remove(call_id)
    return (call_id, reading.open_calls.pop(call_id)), ""


def check_calls_against_tools(record: Record, messages: list, tools: tuple[dict, ...] | None) -> list[Problem]:
    """A call to a function the example does not offer is a mistake in the data, not something to learn."""
    if not tools:
        return []
    offered = {t["function"]["name"] for t in tools}
    problems = []
    for i, message in enumerate(messages):
        for call in message.tool_calls:
            if call.name not in offered:
                problems.append(record.problem(f"message {i + 1} calls {call.name!r}, which is not among the example's tools "
                                               f"({', '.join(sorted(offered))}); add it to 'tools' or fix the name."))
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def readable(example: Example) -> str:
    """A conversation for people to read (the UI's data preview): roles, tool calls as name(arguments), reasoning marked."""
    lines = []
    if example.tools:
        lines.append("tools: " + ", ".join(t["function"]["name"] for t in example.tools))
    for m in example.messages or ():
        if m.role == "tool":
            lines.append(f"tool ({m.name or m.tool_call_id}) -> {m.content}")
            continue
        head = m.role + ("" if m.role != "assistant" or m.trained else " (weight 0, not trained)")
        if m.reasoning:
            lines.append(f"{head} [reasoning] {m.reasoning}")
        for call in m.tool_calls:
            lines.append(f"{head} calls {call.name}({json.dumps(call.arguments, ensure_ascii=False)})")
        if m.content or not (m.tool_calls or m.reasoning):
            lines.append(f"{head}: {m.content}")
    return "\n".join(lines) if example.messages else (example.text or "")
