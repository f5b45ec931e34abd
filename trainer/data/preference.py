"""Preference pairs for dpo and orpo: a prompt, a better answer and a worse one, read from the layouts people use.

openai  {"input": {"messages": [...], "tools": [...]}, "preferred_output": [assistant message],
         "non_preferred_output": [assistant message]}                   (OpenAI's preference fine-tuning format)
trl     {"prompt": ..., "chosen": ..., "rejected": ...}                 (TRL: plain text, or lists of messages)
        {"chosen": [whole conversation], "rejected": [whole conversation]} (TRL's implicit prompt: the shared start)

Each side of a pair becomes an ordinary conversation (the prompt, then that answer) and goes through the same
parsing and tokenizing as SFT data, so tool calls, reasoning and the exact loss mask work the same. Only the
answer's tokens count: earlier assistant turns of the prompt are context.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from trainer.data.formats import Example, Message, to_example
from trainer.data.records import Record
from trainer.data.tokenize import Tokenized, Tokenizer
from trainer.errors import Problem

OPENAI_KEYS = ("input", "preferred_output", "non_preferred_output")
MESSAGES_NAMES = {"messages": "messages", "role": "role", "content": "content", "system": "system"}


@dataclass(frozen=True)
class Pair:
    """The two conversations of a pair: the same prompt, each ending with its answer (the only trained messages)."""

    chosen: Example
    rejected: Example
    prompt_messages: int  # how many messages the prompt has (the answer follows)

    @property
    def file(self) -> str:
        return self.chosen.file

    @property
    def line(self) -> int:
        return self.chosen.line


@dataclass(frozen=True)
class TokenizedPair:
    chosen: Tokenized
    rejected: Tokenized
    index: int  # the pair's place in its split: the key of its reference log-probabilities

    @property
    def file(self) -> str:
        return self.chosen.file

    @property
    def line(self) -> int:
        return self.chosen.line

    @property
    def trained(self) -> int:
        return self.chosen.trained + self.rejected.trained

    @property
    def length(self) -> int:
        """The longer side: the row length the pair needs in a batch."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def pair_layout(row: dict, names: dict) -> str | None:
    """'openai', 'trl' or None: which preference layout a row is in."""
    if all(k in row for k in OPENAI_KEYS[1:]):
        return "openai"
    if names["chosen"] in row and names["rejected"] in row:
        return "trl"
    return None


def pair_columns(overrides: dict) -> dict:
    names = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system"}
    names.update({k: v for k, v in overrides.items() if v is not None and k in names})
    return names


def detect_pairs(records: list[Record], names: dict, sample: int = 100) -> tuple[str, int] | None:
    """The preference layout most of the first records are in, and how many were; None when none is."""
    found = [pair_layout(r.row, names) for r in records[:sample]]
    counts = {layout: found.count(layout) for layout in ("openai", "trl")}
    best = max(counts, key=lambda k: counts[k])
    return (best, counts[best]) if counts[best] else None


def to_pair(record: Record, names: dict) -> tuple[Pair | None, list[Problem]]:
    """One record as a Pair, or the problems that stop it from being one."""
    layout = pair_layout(record.row, names)
    if layout is None:
        keys = ", ".join(sorted(record.row)) or "none"
        return None, [record.problem(f"not a preference pair (its keys: {keys}); write input/preferred_output/non_preferred_output "
                                     f"(OpenAI) or {names['prompt']}/{names['chosen']}/{names['rejected']} (TRL).")]
    sides = _openai_sides(record) if layout == "openai" else _trl_sides(record, names)
    if isinstance(sides, list):
        return None, sides
    prompt, tools, chosen, rejected = sides
    system = record.row.get(names["system"]) if layout == "trl" else None
    if isinstance(system, str) and system.strip() and not (prompt and prompt[0].get("role") == "system"):
        prompt = [{"role": "system", "content": system}] + prompt
    return _pair_of(record, prompt, tools, chosen, rejected)


def _openai_sides(record: Record) -> tuple | list[Problem]:
    row = record.row
    given = row.get("input")
    if not isinstance(given, dict) or not isinstance(given.get("messages"), list) or not given["messages"]:
        return [record.problem("'input' must be an object with a non-empty 'messages' list (the prompt), e.g. "
                               "{\"input\": {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}]}, ...}.")]
    unknown = sorted(set(given) - {"messages", "tools", "parallel_tool_calls", "functions"})
    if unknown:
        return [record.problem(f"'input' has unknown key(s) {', '.join(map(repr, unknown))}; it holds 'messages' and optionally 'tools'.")]
    problems, answers = [], []
    for key in OPENAI_KEYS[1:]:
        value = row.get(key)
        value = [value] if isinstance(value, dict) else value
        if not isinstance(value, list) or not value:
            problems.append(record.problem(f"{key!r} must be a list with the assistant's answer, e.g. "
                                           "[{\"role\": \"assistant\", \"content\": \"...\"}], got " + _short(row.get(key)) + "."))
        answers.append(value)
    if problems:
        return problems
    return list(given["messages"]), given.get("tools") or given.get("functions"), answers[0], answers[1]


def _trl_sides(record: Record, names: dict) -> tuple | list[Problem]:
    row = record.row
    prompt: Any = row.get(names["prompt"])
    chosen: Any = row.get(names["chosen"])
    rejected: Any = row.get(names["rejected"])
    tools = row.get("tools")
    if isinstance(tools, str) and tools.strip():  # TRL and ShareGPT data often keep tools as a JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            return [record.problem("'tools' is text that is not JSON; write the list of functions as JSON.")]
    problems = []
    for column, value in ((names["chosen"], chosen), (names["rejected"], rejected)):
        if not (isinstance(value, str) or (isinstance(value, list) and value)):
            problems.append(record.problem(f"the {column!r} column must be the answer as text or a non-empty list of messages, got {_short(value)}."))
    if prompt is not None and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
        problems.append(record.problem(f"the {names['prompt']!r} column must be text or a non-empty list of messages, got {_short(prompt)}."))
    if problems:
        return problems
    if isinstance(prompt, str) and _whole_conversation(chosen) and _whole_conversation(rejected):
        prompt = None  # a text prompt beside whole conversations repeats their start (TRL's maybe_extract_prompt reads them so)
    if prompt is not None:
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return turns, tools, _as_answer(chosen), _as_answer(rejected)
    if isinstance(chosen, str) or isinstance(rejected, str):
        return [record.problem(f"without a {names['prompt']!r} column, {names['chosen']!r} and {names['rejected']!r} must be whole "
                               f"conversations (lists of messages) that start with the same prompt; add the {names['prompt']!r} column.")]
    cut_c, cut_r = _answer_start(chosen), _answer_start(rejected)
    if chosen[:cut_c] != rejected[:cut_r]:
        first = next((i for i, (a, b) in enumerate(zip(chosen[:cut_c], rejected[:cut_r])) if a != b), min(cut_c, cut_r))
        return [record.problem(f"the prompts of {names['chosen']!r} and {names['rejected']!r} differ (from message {first + 1}); "
                               "a pair compares two answers to the same prompt, so the messages before the answers must be equal.")]
    if cut_c == 0:
        return [record.problem(f"{names['chosen']!r} has no prompt before its answer; start it with the user's message.")]
    return chosen[:cut_c], tools, chosen[cut_c:], rejected[cut_r:]


def _whole_conversation(value: Any) -> bool:
    """A list of messages that holds more than the answer (its prompt too)."""
    return isinstance(value, list) and any(isinstance(m, dict) and m.get("role") not in ("assistant", None) for m in value)


def _as_answer(value: str | list) -> list:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else list(value)


def _answer_start(messages: list) -> int:
    """Where the answer of a whole conversation starts: after its last message that is not the assistant's."""
    cut = len(messages)
    while cut > 0 and isinstance(messages[cut - 1], dict) and messages[cut - 1].get("role") == "assistant":
        cut -= 1
    return cut


def _pair_of(record: Record, prompt: list, tools: Any, chosen: list, rejected: list) -> tuple[Pair | None, list[Problem]]:
    problems = []
    if isinstance(prompt[-1], dict) and prompt[-1].get("role") == "assistant":
        problems.append(record.problem("the prompt ends with an assistant message; it should end with the user's (or a tool's) message that the answers reply to."))
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        roles = {m.get("role") if isinstance(m, dict) else None for m in answer}
        if roles != {"assistant"}:
            problems.append(record.problem(f"the {side} answer must be assistant message(s), got role(s) {sorted(map(str, roles))}."))
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        if all(not _text_of(m) and not m.get("tool_calls") for m in answer):
            problems.append(record.problem(f"the {side} answer is empty; a pair needs two answers to compare."))
    if problems:
        return None, problems
    examples = []
    for answer in (chosen, rejected):
        row = {"messages": prompt + answer, **({"tools": tools} if tools else {})}
        example, found = to_example(Record(row, record.file, record.line), "messages", MESSAGES_NAMES, "assistant")
        if example is None or example.messages is None:
            return None, found
        cut = len(example.messages) - len(answer)  # a system column may have added a message in front
        messages = tuple(replace(m, trained=False) if i < cut and m.role == "assistant" else m for i, m in enumerate(example.messages))
        examples.append(replace(example, messages=messages))
    if _answer(examples[0], len(chosen)) == _answer(examples[1], len(rejected)):
        return None, [record.problem("the chosen and rejected answers are identical, so the pair teaches nothing; fix the rejected answer or remove the pair.")]
    return Pair(examples[0], examples[1], len(examples[0].messages or ()) - len(chosen)), []


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content.strip() if isinstance(content, str) else ""


def _answer(example: Example, n: int) -> tuple[Message, ...]:
    assert example.messages is not None
    return tuple(replace(m, trained=True) for m in example.messages[-n:])


def tokenize_pair(encode: Tokenizer, pair: Pair, index: int) -> tuple[TokenizedPair | None, Problem | None]:
    """Both sides with the SFT machinery (exact masks); a side with nothing left to train stops the pair."""
    sides = []
    for name, example in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        tokenized, problem = encode(example)
        if problem is not None:
            return None, problem
        assert tokenized is not None
        if not tokenized.trained:
            cut = f" (all {tokenized.trained_lost} of its tokens are past data.max_seq_length={encode.max_length}; raise it)" if tokenized.trained_lost else ""
            return None, Problem(f"the {name} answer has no token to learn from{cut}.", "", pair.file, pair.line)
        sides.append(tokenized)
    return TokenizedPair(sides[0], sides[1], index), None


def readable_pair(pair: Pair) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) for people to read: the UI's preview of preference data."""
    from trainer.data.conversations import readable

    prompt = replace(pair.chosen, messages=pair.chosen.messages[: pair.prompt_messages] if pair.chosen.messages else None)
    chosen = replace(pair.chosen, messages=pair.chosen.messages[pair.prompt_messages :] if pair.chosen.messages else None, tools=None)
    rejected = replace(pair.rejected, messages=pair.rejected.messages[pair.prompt_messages :] if pair.rejected.messages else None, tools=None)
    return readable(prompt), readable(chosen), readable(rejected)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
