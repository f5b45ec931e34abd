"""The checks of OpenAI's cookbook notebook "Data preparation and analysis for chat model fine-tuning", on the
training examples: which lack a system, a user or an assistant message; the distributions of messages, tokens and
assistant tokens per example (min, p10, median, p90, max); and how many examples are over the maximum length.

Tokens are counted with the model's own tokenizer and chat template (the notebook uses cl100k_base); assistant
tokens are the assistant turns' tokens as trained, with their end-of-turn token.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from trainer.data.formats import Example
from trainer.data.tokenize import Tokenized


@dataclass(frozen=True)
class Distribution:
    minimum: float
    p10: float
    median: float
    p90: float
    maximum: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution:
        if not values:
            return cls(0, 0, 0, 0, 0)
        ordered = sorted(values)
        return cls(ordered[0], _quantile(ordered, 0.1), _quantile(ordered, 0.5), _quantile(ordered, 0.9), ordered[-1])


def _quantile(ordered: list[float], q: float) -> float:
    at = (len(ordered) - 1) * q
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


@dataclass(frozen=True)
class CookbookChecks:
    examples: int
    missing_system: int
    missing_user: int
    missing_assistant: int
    messages: Distribution
    tokens: Distribution  # before truncation
    assistant_tokens: Distribution | None  # None when the loss also covers other turns (train_on: all)
    over_max_length: int
    max_length: int

    def to_dict(self) -> dict:
        return asdict(self)


def cookbook_checks(examples: list[Example], tokenized: list[Tokenized], max_length: int, train_on: str) -> CookbookChecks:
    roles = [{m.role for m in e.messages or ()} for e in examples]
    return checks_of(
        np.asarray([len(e.messages or ()) for e in examples]),
        np.asarray([sum(ROLE_BITS[r] for r in found if r in ROLE_BITS) for found in roles]),
        np.asarray([t.full_length for t in tokenized]),
        np.asarray([t.trained + t.trained_lost for t in tokenized]),
        max_length, train_on)


ROLE_BITS = {"system": 1, "user": 2, "assistant": 4}  # the data cache's roles column (prepare.ROLES)


def checks_of(messages: np.ndarray, roles: np.ndarray, full_lengths: np.ndarray, assistant: np.ndarray, max_length: int,
              train_on: str) -> CookbookChecks:
    """The checks from per-example columns (the data cache's): message counts, roles present (bits), tokens."""
    def missing(role: str) -> int:
        return int(np.count_nonzero((roles & ROLE_BITS[role]) == 0))

    return CookbookChecks(
        examples=len(messages),
        missing_system=missing("system"),
        missing_user=missing("user"),
        missing_assistant=missing("assistant"),
        messages=Distribution.of(messages.tolist()),
        tokens=Distribution.of(full_lengths.tolist()),
        assistant_tokens=Distribution.of(assistant.tolist()) if train_on == "assistant" else None,
        over_max_length=int(np.count_nonzero(full_lengths > max_length)),
        max_length=max_length,
    )


def render_checks(c: CookbookChecks) -> list[str]:
    out = [f"OpenAI cookbook checks on {c.examples} training example(s): missing a system message {c.missing_system}, "
           f"a user message {c.missing_user}, an assistant message {c.missing_assistant}; over max_seq_length ({c.max_length}): {c.over_max_length}",
           f"{'per example':<22}{'min':>8}{'p10':>9}{'median':>9}{'p90':>9}{'max':>8}"]
    rows = [("  messages", c.messages), ("  tokens", c.tokens)]
    if c.assistant_tokens is not None:
        rows.append(("  assistant tokens", c.assistant_tokens))
    for name, d in rows:
        out.append(f"{name:<22}{d.minimum:>8g}{d.p10:>9.1f}{d.median:>9.1f}{d.p90:>9.1f}{d.maximum:>8g}")
    return out
