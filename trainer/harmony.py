"""gpt-oss's answers, written in OpenAI's harmony format, read back as an OpenAI chat message: the analysis channel as
`reasoning_content`, the final channel (and commentary meant for the user) as `content`, and each message to a
function (`to=functions.NAME`, closed by <|call|>) as a tool call.

A generated answer continues the prompt's `<|start|>assistant`, so it reads, for example:

    <|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>
    <|channel|>analysis<|message|>It is 18.<|end|><|start|>assistant<|channel|>final<|message|>It is 18 C in Paris.<|return|>

Hand-written: OpenAI's own parser (the openai-harmony package) reads token ids of its o200k_harmony vocabulary, which
it downloads on first use, so it cannot read the text of a model trained here offline, nor that of the test
tokenizers; the format is a few markers, read here from the decoded text (special tokens kept).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from trainer.tools import ToolCall

START, CHANNEL, MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
ENDS = ("<|end|>", "<|return|>", "<|call|>")  # a message ends with one; the answer may also end (max tokens) inside one
# the tokens that tell a harmony vocabulary (gpt-oss's) from the others: Phi-3's <|end|> alone is not one
MARKERS = (START, CHANNEL, MESSAGE, "<|return|>", "<|call|>")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL = re.compile(re.escape(CHANNEL) + r"\s*(\w+)")


def is_harmony(tokenizer: Any) -> bool:
    """Whether the tokenizer writes harmony: every marker is one token of its vocabulary."""
    ids = [tokenizer.convert_tokens_to_ids(marker) for marker in MARKERS]
    return all(isinstance(i, int) and i != tokenizer.unk_token_id for i in ids)


@dataclass
class Answer:
    """An answer's messages by kind: what the user reads, the reasoning, the calls (None: a call's arguments are not JSON)."""

    content: str = ""
    reasoning: str = ""
    calls: list[ToolCall | None] = field(default_factory=list)


def read(text: str) -> Answer:
    """The answer in `text` (the generated text after `<|start|>assistant`, special tokens kept). Text outside any
    message (a model that never learned the format) is content."""
    answer = Answer()
    if MESSAGE not in text:
        answer.content = _strip_markers(text).strip()
        return answer
    contents: list[str] = []
    reasonings: list[str] = []
    for part in text.split(START):
        if MESSAGE not in part:
            continue
        header, body = part.split(MESSAGE, 1)
        ended = [at for at in (body.find(end) for end in ENDS) if at >= 0]
        body = body[: min(ended)] if ended else body
        recipient = _RECIPIENT.search(header)
        channel = _CHANNEL.search(header)
        if recipient is not None and recipient.group(1).startswith("functions."):
            answer.calls.append(_call(recipient.group(1)[len("functions."):], body) if ended else None)
        elif channel is not None and channel.group(1) == "analysis":
            reasonings.append(body)
        elif recipient is None:  # final, or commentary to the user (a preamble before calls)
            contents.append(body)
    answer.content = "\n".join(c.strip() for c in contents if c.strip())
    answer.reasoning = "\n".join(r.strip() for r in reasonings if r.strip())
    return answer


def _call(name: str, body: str) -> ToolCall | None:
    try:
        arguments = json.loads(body)
    except json.JSONDecodeError:
        return None
    return {"name": name, "arguments": arguments} if isinstance(arguments, dict) and name else None


def _strip_markers(text: str) -> str:
    for marker in MARKERS + ENDS:
        text = text.replace(marker, "")
    return text


def _partial_marker(text: str) -> int:
    """How many characters at the end of `text` may be the start of a marker."""
    return max((n for marker in MARKERS + ENDS for n in range(1, len(marker)) if text.endswith(marker[:n])), default=0)


class Reader:
    """An answer read as it is generated: feed it each decoded piece, get back what is new in the reasoning and in the
    content (both only grow: a message's body is read from its <|message|> on, and its header is whole by then)."""

    def __init__(self) -> None:
        self.text = ""
        self.answer = Answer()
        self._sent = ("", "")

    def feed(self, piece: str) -> tuple[str, str]:
        """(new reasoning, new content) after this piece."""
        self.text += piece
        whole = self.text[: len(self.text) - _partial_marker(self.text)]  # a marker split between pieces is not text yet
        self.answer = read(whole) if MESSAGE in whole else Answer()  # before the first body: nothing to show yet
        reasoning, content = self.answer.reasoning, self.answer.content
        new = (reasoning[len(self._sent[0]) :] if reasoning.startswith(self._sent[0]) else "",
               content[len(self._sent[1]) :] if content.startswith(self._sent[1]) else "")
        self._sent = (reasoning if reasoning.startswith(self._sent[0]) else self._sent[0],
                      content if content.startswith(self._sent[1]) else self._sent[1])
        return new
