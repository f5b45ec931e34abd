"""The prompts each system sees: the conversation as it is (zero-shot), or with k solved examples before it (few-shot)."""
from __future__ import annotations

import random
from dataclasses import dataclass

from trainer.data.formats import Example


@dataclass(frozen=True)
class Case:
    """One evaluation item: the conversation up to the final answer, and that answer."""

    messages: tuple[dict, ...]  # system (if any) and the turns before the final assistant turn
    reference: str
    file: str
    line: int


def to_case(example: Example) -> Case | None:
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    if not messages or messages[-1]["role"] != "assistant":
        return None
    return Case(tuple(messages[:-1]), messages[-1]["content"], example.file, example.line)


def pick_shots(pool: list[Example], k: int, seed: int) -> list[Example]:
    """k training examples, the same for every case, chosen with the seed."""
    candidates = [e for e in pool if e.messages and len([m for m in e.messages if m.role != "system"]) >= 2]
    return random.Random(seed).sample(candidates, min(k, len(candidates)))


def few_shot_messages(case: Case, shots: list[Example]) -> list[dict]:
    """The case's system prompt once, then each shot's turns as real user/assistant turns, then the case's own turns."""
    system = [m for m in case.messages if m["role"] == "system"]
    turns = []
    for shot in shots:
        turns += [{"role": m.role, "content": m.content} for m in shot.messages if m.role != "system"]
    return system + turns + [m for m in case.messages if m["role"] != "system"]
