"""The prompts each system sees: the conversation as it is (zero-shot), or with k solved examples before it (few-shot)."""
from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.data.formats import Example, Message
from trainer.generate import ChatMessage, ToolSpec


@dataclass(frozen=True)
class Case:
    """One evaluation item: the conversation up to the final answer, and that answer (a grpo prompt has none)."""

    messages: tuple[ChatMessage, ...]  # system (if any) and the turns before the final assistant turn
    reference: str | None  # the final answer's text, or its tool calls as a JSON list of {"name", "arguments"}; None: a grpo prompt
    file: str
    line: int
    tools: tuple[ToolSpec, ...] | None = None  # the functions the example offers
    turns: tuple[Message, ...] = ()  # the same turns as Messages, and the answer last (for the answer loss)
    item: Mapping[str, Any] | None = None  # what graders see as `item` (cases.with_items); None until the graders need it


def message_dict(m: Message) -> ChatMessage:
    """A message as apply_chat_template takes it (tool calls with their arguments as objects)."""
    item: ChatMessage = {"role": m.role, "content": m.content}
    if m.tool_calls:
        item["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
    if m.tool_call_id:
        item["tool_call_id"] = m.tool_call_id
    if m.name:
        item["name"] = m.name
    return item


def reference_text(m: Message) -> str:
    if m.tool_calls:
        return json.dumps([{"name": c.name, "arguments": c.arguments} for c in m.tool_calls], ensure_ascii=False)
    return m.content


def to_case(example: Example) -> Case | None:
    if not example.messages or example.messages[-1].role != "assistant":
        return None
    answer = example.messages[-1]
    return Case(tuple(message_dict(m) for m in example.messages[:-1]), reference_text(answer), example.file, example.line,
                example.tools, example.messages)


def pick_shots(pool: Sequence[Example], k: int, seed: int) -> list[Example]:
    """k examples of the pool (examples with a question and an answer: cases.eval_cases), the same for every case,
    chosen with the seed; random.sample reads only the k it picks of a pool that makes them on access (cases.Pool)."""
    return random.Random(seed).sample(pool, min(k, len(pool)))


def few_shot_messages(case: Case, shots: list[Example]) -> list[ChatMessage]:
    """The case's system prompt once, then each shot's turns as real user/assistant turns, then the case's own turns."""
    system = [m for m in case.messages if m["role"] == "system"]
    turns = []
    for shot in shots:
        turns += [message_dict(m) for m in shot.messages or () if m.role != "system"]
    return system + turns + [m for m in case.messages if m["role"] != "system"]
