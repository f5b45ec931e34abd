"""The data formats people use, detected from the records and turned into one shape: a list of messages.

messages            {"messages": [{"role": "user", "content": "..."}, ...], "tools": [...]}  (OpenAI, with tool calls; see conversations.py)
sharegpt            {"conversations": [{"from": "human", "value": "..."}, ...], "tools": "[...]"}
alpaca              {"instruction": ..., "input": ..., "output": ...}
prompt_completion   {"prompt": ..., "completion": ...}
text                {"text": ...}
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from trainer.data.conversations import (  # noqa: F401 (Example, Message and ToolCall are read from here too)
    Example,
    Message,
    ToolCall,
    chat_messages,
    check_calls_against_tools,
    parse_tools,
)
from trainer.data.records import Record
from trainer.errors import Problem, UserError

TOOLS_COLUMNS = ("tools", "functions")  # per example: OpenAI's tools, or its legacy functions

# The usual column names of each format; data.columns renames them.
DEFAULT_COLUMNS = {
    "messages": {"messages": "messages", "role": "role", "content": "content", "system": "system"},
    "sharegpt": {"messages": "conversations", "role": "from", "content": "value", "system": "system"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion", "system": "system"},
    "text": {"text": "text"},
}
SIGNATURES = {  # the columns a record must have to be in each format
    "messages": ("messages",),
    "sharegpt": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}


def columns_for(fmt: str, overrides: dict) -> dict:
    names = dict(DEFAULT_COLUMNS[fmt])
    names.update({k: v for k, v in overrides.items() if v is not None and k in names})
    return names


def detect_format(records: list[Record], overrides: dict, sample: int = 100) -> tuple[str, str]:
    """The format that fits most of the first records, and a sentence saying what was found."""
    head = records[:sample]
    counts: Counter = Counter()
    for fmt, signature in SIGNATURES.items():
        names = columns_for(fmt, overrides)
        for record in head:
            if all(names[c] in record.row for c in signature) and _shape_fits(fmt, record.row, names):
                counts[fmt] += 1
    if not counts:
        keys = ", ".join(sorted(head[0].row)) if head else "none"
        raise UserError(
            f"{head[0].file if head else 'data'}: could not tell the data format. The first record has the columns: {keys}. "
            "Expected messages, conversations (ShareGPT), instruction/output (Alpaca), prompt/completion, or text. "
            "If your columns have other names, map them with data.columns (e.g. data.columns.messages: dialog), "
            "or set data.format."
        )
    fmt, hits = counts.most_common(1)[0]
    names = columns_for(fmt, overrides)
    shown = "/".join(names[c] for c in _display_columns(fmt))
    rows = f"{len(head)} rows" if len(records) <= sample else f"the first {len(head)} rows"
    return fmt, f"detected {fmt} format: {shown} in {hits} of {rows}"


def _display_columns(fmt: str) -> tuple[str, ...]:
    return {"alpaca": ("instruction", "input", "output")}.get(fmt, SIGNATURES[fmt])


def _shape_fits(fmt: str, row: dict, names: dict) -> bool:
    if fmt not in ("messages", "sharegpt"):
        return True
    turns = row.get(names["messages"])
    first = turns[0] if isinstance(turns, list) and turns else None
    return isinstance(first, dict) and names["role"] in first


def to_example(record: Record, fmt: str, names: dict, train_on: str) -> tuple[Example | None, list[Problem]]:
    """One record as an Example, or the problems that stop it from being one."""
    row = record.row
    if fmt == "text":
        text = row.get(names["text"])
        if not isinstance(text, str) or not text.strip():
            return None, [record.problem(f"the {names['text']!r} column must be non-empty text, got {_short(text)}.")]
        return Example(None, text, record.file, record.line), []
    tools = None
    if fmt in ("messages", "sharegpt"):
        messages, problems = chat_messages(record, fmt, names)
        column = next((c for c in TOOLS_COLUMNS if row.get(c) not in (None, "", [])), None)
        if column:
            tools, found = parse_tools(record, row[column], column)
            problems += found
        problems += check_calls_against_tools(record, messages, tools)
    else:
        messages, problems = _single_turn(record, fmt, names)
    if problems:
        return None, problems
    system = row.get(names.get("system", ""), None) if names.get("system") else None
    if isinstance(system, str) and system.strip() and messages[0].role != "system":
        messages.insert(0, Message("system", system, False))
    if not any(m.role == "assistant" for m in messages):
        return None, [record.problem("the conversation has no assistant turn, so there is nothing to learn; add the answer as an assistant message.")]
    if train_on == "assistant" and not any(m.trained for m in messages):
        return None, [record.problem("every assistant turn has weight 0, so nothing would be learned from this example.")]
    return Example(tuple(messages), None, record.file, record.line, tools), []


def _single_turn(record: Record, fmt: str, names: dict) -> tuple[list[Message], list[Problem]]:
    row = record.row
    problems = []
    if fmt == "alpaca":
        instruction, extra, answer = row.get(names["instruction"]), row.get(names["input"]), row.get(names["output"])
        for column, value in ((names["instruction"], instruction), (names["output"], answer)):
            if not isinstance(value, str) or not value.strip():
                problems.append(record.problem(f"the {column!r} column must be non-empty text, got {_short(value)}."))
        if extra is not None and not isinstance(extra, str):
            problems.append(record.problem(f"the {names['input']!r} column must be text, got {_short(extra)}."))
        if problems:
            return [], problems
        prompt = instruction if not (extra and extra.strip()) else f"{instruction}\n\n{extra}"
        return [Message("user", str(prompt), False), Message("assistant", str(answer), True)], []  # both checked to be text
    prompt, completion = row.get(names["prompt"]), row.get(names["completion"])
    for column, value in ((names["prompt"], prompt), (names["completion"], completion)):
        if not isinstance(value, str) or not value.strip():
            problems.append(record.problem(f"the {column!r} column must be non-empty text, got {_short(value)}."))
    if problems:
        return [], problems
    return [Message("user", str(prompt), False), Message("assistant", str(completion), True)], []  # both checked to be text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
