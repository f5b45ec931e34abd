"""Conversations to token ids and labels, with the loss mask computed exactly.

Each conversation is rendered once; masks.py locates every assistant turn in that one render and the text
is tokenized once with offsets, so a token is trained exactly when it belongs to an assistant turn as the
template renders it in the whole conversation (plus the text that closes the turn). No searching for
response-template token ids, and no assumption that a prefix renders like the whole.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from trainer.data.formats import Example, Message
from trainer.data.masks import (
    SpanError,
    TemplateFeatures,
    features_with_system,
    one_call_each,
    probe_template,
    render,
    render_with_spans,
    template_messages,
)
from trainer.data.templates import ChatTemplate
from trainer.errors import Problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100  # label of a position that is not in the loss


@dataclass(frozen=True)
class Tokenized:
    input_ids: Any  # a tuple of ints, or an int32 numpy view of the memory-mapped data cache (store.py)
    labels: Any
    file: str
    line: int
    full_length: int  # tokens before truncation
    trained_lost: int  # trained tokens cut off by max_seq_length
    reasoning_dropped: int = 0  # assistant turns whose reasoning the template left out of the render

    @property
    def trained(self) -> int:
        return int(np.count_nonzero(np.asarray(self.labels) != IGNORE))


Rendered = tuple[str, list[tuple[int, int, int]]]  # the conversation's text, and (message index, start, end) of each assistant turn


class Tokenizer:
    """A tokenizer plus the template and settings that turn examples into ids and labels."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, train_on: str, max_length: int, fold_system: bool = False,
                 model_name: str = "the model", tool_call_ids: str = "auto"):
        self.tok = tokenizer
        self.template = template
        self.train_on = train_on
        self.max_length = max_length
        self.fold_system = fold_system
        self.model_name = model_name
        self.tool_call_ids = tool_call_ids  # data.tool_call_ids: keep, remap, or auto (remap where the template refuses OpenAI's ids)
        self._features: dict[str, TemplateFeatures] = {}  # per template (the tokenizer's default and tool_use ones)
        self._specials: list[str] | None = None
        # per template and system prompt: most data sets have one or a few
        self._by_system: dict[tuple[str, str], TemplateFeatures] = {}

    @property
    def features(self) -> TemplateFeatures:
        """What the (default) template does with tools, reasoning and system prompts (probed once, when first needed)."""
        return self.features_of(self.template)

    def features_of(self, template: ChatTemplate) -> TemplateFeatures:
        if template.jinja not in self._features:
            from trainer.data.masks import _special_texts

            self._specials = _special_texts(self.tok)
            self._features[template.jinja] = probe_template(self.tok, template.jinja, self._specials, with_tools=template.variant == "tool_use",
                                                            variables=template.variables)
        return self._features[template.jinja]

    def probe(self) -> None:
        """Probe every template a conversation may be rendered with (before forking workers, which inherit the results)."""
        for template in self.template.variants():
            self.features_of(template)

    def describe(self) -> str:
        """What the templates do, in words (each named when the tokenizer has several)."""
        if self.template.tool_use is None:
            return self.features.describe()
        return "; ".join(f"{t.variant}: {self.features_of(t).describe()}" for t in self.template.variants())

    def template_for(self, tools: Sequence[dict] | None) -> ChatTemplate:
        return self.template.for_tools(tools)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict], generation_prompt: bool, tools: Sequence[dict] | None = None) -> str:
        template = self.template_for(tools)
        return render(self.tok, template.jinja, messages, tools, generation_prompt, template.variables)

    def template_messages(self, messages: Sequence[Message] | None, tools: Sequence[dict] | None = None) -> list[dict]:
        return template_messages(self.laid_out(messages or (), tools), self.features_of(self.template_for(tools)), self.fold_system,
                                 self.tool_call_ids)

    def laid_out(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> Sequence[Message]:
        """The messages as the template is given them: one tool call per message where it renders only one (gpt-oss)."""
        return messages if self.features_of(self.template_for(tools)).parallel_calls else one_call_each(messages)

    def __call__(self, example: Example) -> tuple[Tokenized | None, Problem | None]:
        result = self.encode_batch([example])[0]
        if isinstance(result, Problem):
            return None, result
        return replace(result, input_ids=tuple(result.input_ids.tolist()), labels=tuple(result.labels.tolist())), None  # type: ignore[attr-defined]

    def encode_batch(self, examples: Sequence[Example]) -> list[Tokenized | Problem]:
        """Each example as ids and labels (int32 numpy arrays), or the Problem that stops it: one render per
        conversation, and one call of the tokenizer for the whole batch (the Rust tokenizer encodes it at once)."""
        rendered: list[Rendered | Problem | str] = [example.text if example.text is not None else self.render_spans(example)
                                                     for example in examples]
        texts = [r if isinstance(r, str) else r[0] for r in rendered if not isinstance(r, Problem)]
        encoded = iter(self._encode_with_offsets(texts))
        out: list[Tokenized | Problem] = []
        for example, result in zip(examples, rendered):
            if isinstance(result, Problem):
                out.append(result)
                continue
            token_ids, offsets = next(encoded)
            ids = np.asarray(token_ids, dtype=np.int32)
            if isinstance(result, str):  # plain text: every token is trained, and the end-of-text token closes it
                eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
                ids = np.concatenate([ids, np.asarray(eos, dtype=np.int32)])
                out.append(self._truncated(example, ids, ids.copy()))
                continue
            out.append(self._labelled(example, result, ids, offsets))
        return out

    def _encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, character offsets) of each text, in one call: the Rust tokenizer's encode_batch when there is one
        (what tokenizer(texts) calls, without building a BatchEncoding of Python lists around it)."""
        if not texts:
            return []
        from transformers import PreTrainedTokenizerBase

        backend: Any = getattr(self.tok, "backend_tokenizer", None) if getattr(self.tok, "is_fast", False) else None
        plain = backend is not None and backend.truncation is None and backend.padding is None  # as tokenizer() sets them
        if backend is not None and plain and type(self.tok).__call__ is PreTrainedTokenizerBase.__call__:
            return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
        encoded = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(encoded["input_ids"], encoded["offset_mapping"]))

    def _labelled(self, example: Example, rendered: Rendered, ids: np.ndarray, offsets: list[tuple[int, int]]) -> Tokenized:
        text, spans = rendered
        if self.train_on == "all":  # every token but those of assistant turns with weight 0
            untrained = in_spans(offsets, [(s, e) for i, s, e in spans if not self._trained(example, i)])
            labels = np.where(untrained, IGNORE, ids).astype(np.int32)
        else:
            trained = in_spans(offsets, [(s, e) for i, s, e in spans if self._trained(example, i)])
            labels = np.where(trained, ids, IGNORE).astype(np.int32)
        dropped = 0
        for i, s, e in spans:
            reasoning = self._message(example, i).reasoning
            dropped += bool(reasoning and reasoning.strip()[:40] not in text[s:e])
        return replace(self._truncated(example, ids, labels), reasoning_dropped=dropped)

    def render_spans(self, example: Example) -> Rendered | Problem:
        """The conversation rendered once, with where each assistant turn is, or the Problem that stops it."""
        def problem(message: str) -> Problem:
            return Problem(message, "", example.file, example.line)

        why = self.dropped_features(example)
        if why:
            return problem(why)
        template = self.template_for(example.tools)
        items = self.template_messages(example.messages, example.tools)
        try:
            return render_with_spans(self.tok, template.jinja, self._features_for(template, items), items, example.tools, self._specials,
                                     template.variables)
        except SpanError as exc:
            return problem(str(exc))
        except Exception as exc:  # a Jinja template can raise anything (raise_exception, TypeError, ...)
            fix = ("; set data.tool_call_ids: remap to give every call a 9-character id (the same for the call and its result)"
                   if "call id" in str(exc).lower() and self.tool_call_ids != "remap" else "")
            return problem(f"the chat template could not render this conversation: {exc}{fix}")

    def rendered(self, example: Example) -> tuple[str, list[tuple[int, int, int]], list[int], list[tuple[int, int]]] | Problem:
        """(text, [(message index, start, end)], ids, offsets) of a conversation, or the Problem that stops it."""
        result = self.render_spans(example)
        if isinstance(result, Problem):
            return result
        text, spans = result
        encoded = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return text, spans, list(encoded["input_ids"]), list(encoded["offset_mapping"])

    def _features_for(self, template: ChatTemplate, items: list[dict]) -> TemplateFeatures:
        """The template's features for this conversation's system prompt (see masks.features_with_system)."""
        features = self.features_of(template)
        system = items[0]["content"] if items and items[0]["role"] == "system" and isinstance(items[0].get("content"), str) else None
        if system is None:
            return features
        if (template.jinja, system) not in self._by_system:
            self._by_system[template.jinja, system] = features_with_system(self.tok, template.jinja, features, system, self._specials or [],
                                                                           template.variables)
        return self._by_system[template.jinja, system]

    def _message(self, example: Example, index: int) -> Message:
        """The example's message behind template message `index` (a folded system prompt shifts them by one)."""
        messages = self.laid_out(example.messages or (), example.tools)
        shift = 1 if self.fold_system and messages and messages[0].role == "system" else 0
        return messages[index + shift]

    def _trained(self, example: Example, index: int) -> bool:
        return self._message(example, index).trained

    def dropped_features(self, example: Example) -> str | None:
        """Why the template cannot train this example as written: it would silently drop part of it."""
        f = self.features_of(self.template_for(example.tools))
        if self.template.tool_use is not None:  # calls or results without a tools list: the model's default template renders them
            fix_tools = ("give the example its 'tools' (the model's template for tools, tool_use, renders examples that have them), "
                         "or set data.chat_template: tool_use to render every example with it")
        else:
            fix_tools = ("set data.chat_template: hermes (a built-in ChatML template that renders tools, tool calls and results)"
                         + ("" if f.chatml else ", though this model was not trained on ChatML,") + " or use a model whose template renders tools")
        messages = example.messages or ()
        if example.tools and not f.tools:
            return f"the example has 'tools', but the chat template of {self.model_name} ignores them, so the model would never see them; {fix_tools}."
        if any(m.tool_calls for m in messages) and not f.tool_calls:
            return f"the example has assistant 'tool_calls', but the chat template of {self.model_name} does not render them; {fix_tools}."
        if any(m.role == "tool" for m in messages) and not f.tool_results:
            return f"the example has 'tool' messages, but the chat template of {self.model_name} does not render them; {fix_tools}."
        if any(m.reasoning for m in messages) and f.thinking_off:
            said = ", ".join(f"{k}: {v}" for k, v in self.template_for(example.tools).variables.items())
            return (f"the example has reasoning ('reasoning_content' or <think>), but the chat template of {self.model_name} "
                    f"({said or 'as it is'}) opens every answer with an empty reasoning block, so the model would never write it; "
                    "remove the reasoning from the data, or let the template think (drop enable_thinking: false from data.template_kwargs).")
        if any(m.reasoning for m in messages) and f.reasoning == "none":
            return (f"the example has reasoning ('reasoning_content' or <think>), but the chat template of {self.model_name} drops it, "
                    "so it would not be trained; remove the reasoning from the data, or use a template that keeps it "
                    "(data.chat_template: hermes keeps it in every turn).")
        if messages and messages[0].role == "system" and f.system != "keeps" and not self.fold_system:
            what = ("refuses a system role" if f.system == "refuses" else
                    "drops the system prompt of a conversation that ends with an answer (it puts it only into a final user turn)")
            return (f"the example has a system prompt, but the chat template of {self.model_name} {what}; "
                    "set data.system_prompt: fold to put it at the start of the first user turn.")
        return None

    def _truncated(self, example: Example, ids: np.ndarray, labels: np.ndarray) -> Tokenized:
        lost = int(np.count_nonzero(labels[self.max_length :] != IGNORE))
        return Tokenized(ids[: self.max_length], labels[: self.max_length], example.file, example.line, len(ids), lost)


def in_spans(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """For each token, whether it begins inside one of the character spans and covers some text: masks.label_spans's
    rule, for a whole conversation at once (the tokens' start offsets never decrease, so each span is one range)."""
    if not offsets or not spans:
        return np.zeros(len(offsets), dtype=bool)
    starts, ends = (np.array(column) for column in zip(*offsets))  # two tuples of ints: much faster than the pairs
    inside = np.zeros(len(starts), dtype=bool)
    for s, e in spans:
        inside[np.searchsorted(starts, s) : np.searchsorted(starts, e)] = True
    return inside & (ends > starts)
