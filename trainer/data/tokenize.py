"""Conversations to token ids and labels, with the loss mask computed exactly.

The mask is found by rendering the conversation prefix by prefix: an assistant
turn's tokens are those between the prompt rendered up to it (with the
generation prompt) and the conversation rendered through it. Each prefix's
tokens must be a prefix of the whole conversation's tokens; where a template
re-tokenises differently at a boundary, the example is reported, not guessed
at. No searching for response-template token ids.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.data.formats import Example
from trainer.data.templates import ChatTemplate
from trainer.errors import Problem

IGNORE = -100  # label of a position that is not in the loss


@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    file: str
    line: int
    full_length: int  # tokens before truncation
    trained_lost: int  # trained tokens cut off by max_seq_length

    @property
    def trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


class Tokenizer:
    """A tokenizer plus the template and settings that turn examples into ids and labels."""

    def __init__(self, tokenizer, template: ChatTemplate, train_on: str, max_length: int):
        self.tok = tokenizer
        self.template = template
        self.train_on = train_on
        self.max_length = max_length
        self.turn_end_ids = self.encode(template.turn_end) if template.turn_end else []
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(
            messages, chat_template=self.template.jinja, tokenize=False, add_generation_prompt=generation_prompt
        )

    def __call__(self, example: Example) -> tuple[Tokenized | None, Problem | None]:
        if example.text is not None:
            ids = self.encode(example.text) + ([self.tok.eos_token_id] if self.tok.eos_token_id is not None else [])
            return self._truncated(example, ids, list(ids)), None
        messages = [{"role": m.role, "content": m.content} for m in example.messages]
        try:
            full_ids = self.encode(self.render(messages, False))
        except Exception as exc:  # a Jinja template can raise anything (raise_exception, TypeError, ...)
            return None, Problem(f"the chat template could not render this conversation: {exc}", "", example.file, example.line)
        labels = list(full_ids) if self.train_on == "all" else [IGNORE] * len(full_ids)
        for i, message in enumerate(example.messages):
            if message.role != "assistant":
                continue
            if i == 0:
                return None, Problem("the conversation begins with an assistant message; begin it with a user (or system) "
                                     "message, so there is something to answer.", "", example.file, example.line)
            try:
                start_ids = self.encode(self.render(messages[:i], True))
                end_ids = self.encode(self.render(messages[: i + 1], False))
            except Exception as exc:  # a Jinja template can raise anything on a partial conversation
                return None, Problem(f"the chat template could not render the conversation up to message {i + 1}: {exc}",
                                     "", example.file, example.line)
            for part in (start_ids, end_ids):
                if full_ids[: len(part)] != part:
                    return None, Problem(
                        f"the chat template tokenises message {i + 1} differently inside the whole conversation than on its own, "
                        "so its loss mask cannot be computed exactly. Try another data.chat_template (e.g. chatml).",
                        "", example.file, example.line,
                    )
            start, end = len(start_ids), self._turn_end(full_ids, len(start_ids), len(end_ids))
            labels[start:end] = full_ids[start:end] if message.trained else [IGNORE] * (end - start)
        return self._truncated(example, full_ids, labels), None

    def _turn_end(self, ids: list[int], start: int, end: int) -> int:
        """The end of an assistant turn: just after the token(s) that close it, so the model learns to stop,
        but not the template's scaffolding after them (such as a newline before the next turn).

        A built-in template names its closing text; for others it is the turn's last special token
        (the EOS or end-of-turn token); a turn without one is learned whole.
        """
        n = len(self.turn_end_ids)
        if n:
            for pos in range(end - n, start - 1, -1):
                if ids[pos : pos + n] == self.turn_end_ids:
                    return pos + n
            return end
        for pos in range(end - 1, start - 1, -1):
            if ids[pos] in self.special_ids:
                return pos + 1
        return end

    def _truncated(self, example: Example, ids: list[int], labels: list[int]) -> Tokenized:
        lost = sum(1 for label in labels[self.max_length :] if label != IGNORE)
        return Tokenized(tuple(ids[: self.max_length]), tuple(labels[: self.max_length]), example.file, example.line, len(ids), lost)
