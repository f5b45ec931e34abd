"""Tool-call ids that a client sends, as a template that takes only 9-character ids gets them, and back.

Mistral's templates (7B v0.3, Nemo, Small 3.2) raise on an id that is not 9 letters and digits ("Tool call IDs should
be alphanumeric strings with length 9!"), while OpenAI's clients send `call_...` ids. The ids only have to agree
between a call and its result, so a request whose ids the template refuses is rendered with each such id replaced by
short_call_id's 9 characters (what data.tool_call_ids: auto does to the training data, so the model sees the ids it was
trained on), and an id the model writes back in its answer is the client's again.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.data.masks import _SHORT_ID, short_call_id


@dataclass
class CallIds:
    """One request's ids: each original id the template refused and the short id it was given."""

    short: dict[str, str] = field(default_factory=dict)

    def apply(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with every id of this map replaced (the same id in a call and in the result that names it)."""
        def swap(value: Any) -> Any:
            return self.short.get(value, value) if isinstance(value, str) else value

        out = []
        for message in messages:
            message = dict(message)
            if isinstance(message.get("tool_calls"), list):
                message["tool_calls"] = [dict(c, id=swap(c.get("id"))) if isinstance(c, dict) else c for c in message["tool_calls"]]
            if "tool_call_id" in message:
                message["tool_call_id"] = swap(message["tool_call_id"])
            out.append(message)
        return out

    def restore(self, text: str) -> str:
        """The text with each short id the model writes back (as Mistral's calls carry an "id") the client's again."""
        if not self.short or not text:
            return text
        back = {short: original for original, short in self.short.items()}
        return re.sub("|".join(map(re.escape, back)), lambda m: back[m.group(0)], text)

    @classmethod
    def of(cls, messages: Sequence[dict[str, Any]]) -> CallIds:
        """Every id in the messages that is not 9 letters and digits, with its short id."""
        ids = [c.get("id") for m in messages for c in (m.get("tool_calls") or []) if isinstance(c, dict)]
        ids += [m.get("tool_call_id") for m in messages]
        return cls({i: short_call_id(i) for i in ids if isinstance(i, str) and not _SHORT_ID.fullmatch(i)})


def render_with_call_ids(render: Callable[[list[dict[str, Any]], Any], str], messages: list[dict[str, Any]],
                         tools: Any) -> tuple[str, CallIds]:
    """render(messages, tools), and the ids it was given. Rendered as sent; where the template refuses them and ids
    that are not 9 letters and digits are what it refuses, rendered again with those remapped. Any other refusal is the
    template's first one."""
    try:
        return render(messages, tools), CallIds()
    except Exception:
        ids = CallIds.of(messages)
        if not ids.short:
            raise
        try:
            return render(ids.apply(messages), tools), ids
        except Exception:
            pass
        raise
