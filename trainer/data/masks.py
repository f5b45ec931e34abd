"""Which tokens of a rendered conversation are trained: exactly each assistant turn as the template renders it
in the whole conversation (text, tool calls, reasoning) plus the text that closes it.

Each conversation is rendered once. The content of every system, user and tool message is wrapped in
invisible markers first, so after the render the markers say where each of those messages sits; the
markers are then removed (they never reach the tokenizer). An assistant turn is what lies between the
message before it and the message after it: it begins after the template's assistant header (what the
generation prompt adds) and ends with the template's end-of-turn text. The whole text is tokenized once
with offsets, and a token is trained when it begins inside a trained span. This does not depend on the
template rendering a prefix of the conversation the way it renders the whole (Qwen3 and DeepSeek-R1
drop earlier reasoning, Mistral moves the system prompt into the last user turn), and nothing searches
for response-template token ids.

What a template does with tools, tool calls, tool results, reasoning and a system prompt is found once
per template by rendering small probe conversations with and without each (`probe_template`).
"""
from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from trainer.data.conversations import Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_OPEN, _OPEN_END, _CLOSE, _CLOSE_END = "\ue000", "\ue001", "\ue002", "\ue003"
_MARK = re.compile(f"([{_OPEN}{_CLOSE}])(\\d+)[{_OPEN_END}{_CLOSE_END}]")
MARKED_ROLES = ("system", "user", "tool")


@dataclass(frozen=True)
class TemplateFeatures:
    """What a chat template does, found by rendering probe conversations with and without each feature."""

    header: str  # what the generation prompt adds: the text before an assistant turn's body ("" for Mistral)
    close: str  # the text that ends an assistant turn, through the token that stops generation (trained: the model learns to stop)
    tails: dict  # role -> the text between that role's content and the next assistant turn's body, on the generation prompt
    system: str  # "keeps" a system prompt, "drops" it (Mistral: only into a final user turn) or "refuses" it (Gemma 2 raises)
    tools: bool  # renders the tools list
    tool_calls: bool  # renders assistant tool calls
    tool_results: bool  # renders tool messages
    reasoning: str  # "all" turns keep their reasoning, "last" (earlier turns' reasoning dropped, Qwen3/DeepSeek-R1), or "none"
    reasoning_field: str  # the message field the template reads reasoning from (reasoning_content; gpt-oss: thinking), "" for <think> in the content
    empty_content: str  # how an assistant message with only tool calls is passed: "absent", "none" or "empty"
    arguments: str  # tool-call arguments as an "object", or as "json" text (templates that concatenate them)
    chatml: bool  # the template lays turns out in ChatML (<|im_start|>)
    with_tools: bool = False  # probed with a tools list throughout: a tokenizer's tool_use template renders only conversations with tools
    short_ids: bool = False  # refuses OpenAI-style tool-call ids (call_...) and takes 9-character ones (Mistral)
    stop: str = ""  # the stop token that ends `close` when more comes before it (Command-R7B's <|END_OF_TURN_TOKEN|>)
    last_close: str = ""  # closes the conversation's last answer when unlike `close` (gpt-oss: <|return|>, earlier answers <|end|>)
    call_close: str = ""  # closes a turn that ends with tool calls (gpt-oss: <|call|>; Command-R7B: <|END_ACTION|><|END_OF_TURN_TOKEN|>)
    parallel_calls: bool = True  # renders every call of a message (gpt-oss renders only the first: one call per message)
    thinking_off: bool = False  # the generation prompt closes an empty reasoning block (Qwen3 with enable_thinking false): no reasoning is generated

    def describe(self) -> str:
        said = [
            "renders tools" if self.tools and self.tool_calls else "does not render tools" if not self.tools else "renders the tools list but not tool calls",
            {"all": "keeps reasoning in every turn", "last": "keeps reasoning only after the last user turn (drops earlier turns' reasoning)",
             "none": "drops reasoning"}[self.reasoning],
            {"keeps": "keeps the system prompt", "drops": "drops the system prompt of a conversation that ends with an answer",
             "refuses": "refuses a system prompt"}[self.system],
        ]
        return ", ".join(said)


def render(tokenizer: PreTrainedTokenizerBase, jinja: str, messages: list[dict], tools: Sequence[dict] | None = None, generation_prompt: bool = False,
           variables: Mapping[str, Any] | None = None) -> str:
    """`variables`: the template's own (data.template_kwargs), as apply_chat_template(**kwargs) passes them."""
    extra = {"tools": list(tools)} if tools else {}
    return tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False, add_generation_prompt=generation_prompt,
                                         **{**(variables or {}), **extra})


def _try(tokenizer: PreTrainedTokenizerBase, jinja: str, messages: list[dict], tools: Sequence[dict] | None = None, generation_prompt: bool = False,
         variables: Mapping[str, Any] | None = None) -> str | None:
    try:
        return render(tokenizer, jinja, messages, tools, generation_prompt, variables)
    except Exception:  # noqa: BLE001 - a probe that a template refuses is an answer, not an error
        return None


def _special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    added = set(getattr(tokenizer, "get_added_vocab", dict)() or {}) | set(getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted((t for t in added if t), key=len, reverse=True)


def _through_first_special(text: str, specials: list[str]) -> str:
    """`text` up to the end of the first special token in it (all of it when it has none)."""
    best = None
    for token in specials:
        at = text.find(token)
        if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(token) > best[1])):
            best = (at, len(token))
    return text[: best[0] + best[1]] if best else text.rstrip()


def _stop_texts(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The tokens generation stops on (trainer.generate.stop_ids): eos and the known end-of-turn tokens."""
    from trainer.data.templates import END_OF_TURN

    return {t for t in (getattr(tokenizer, "eos_token", None), *END_OF_TURN) if t}


def _closing(after: str, specials: list[str], stops: set[str]) -> tuple[str, str]:
    """What closes an answer, from the text after it: through the first special token, and on through the special tokens
    right after it up to a token that stops generation, when one comes before any other text. Command-R7B writes
    <|END_RESPONSE|><|END_OF_TURN_TOKEN|> and stops on the second: both are trained, or the model never learns to stop.
    Also the stop token itself when the close is longer (a turn that ends otherwise still ends with it)."""
    first = _through_first_special(after, specials)
    if not first or any(first.endswith(s) for s in stops):
        return first, ""
    at = len(first)
    while (token := next((s for s in specials if after.startswith(s, at)), None)) is not None:  # specials: longest first
        at += len(token)
        if token in stops:
            return after[:at], token
    return first, ""  # no stop token in the run: the first special closes the turn (Gemma's <end_of_turn>)


def _cuts_after_specials(text: str, specials: list[str]) -> list[str]:
    """Prefixes of `text` that end right after a special token, longest first (for a header a template shortens)."""
    ends = set()
    for token in specials:
        start = text.find(token)
        while start >= 0:
            ends.add(start + len(token))
            start = text.find(token, start + 1)
    return [text[:e] for e in sorted(ends, reverse=True) if e < len(text)]


OPENAI_ID = "call_8pQ2vXcY3nR7tLm4"  # an id as OpenAI's API makes them, which Mistral's templates refuse
PROBE_TOOL = {"type": "function", "function": {"name": "probe_lookup_zq", "description": "Look a word up.",
                                               "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}


def _probe_call(content_style: str, arguments: str) -> dict:
    call = {"id": "call00001", "type": "function",
            "function": {"name": "probe_lookup_zq", "arguments": {"word": "probeargzq"} if arguments == "object" else '{"word": "probeargzq"}'}}
    message: dict[str, Any] = {"role": "assistant", "tool_calls": [call]}
    if content_style != "absent":
        message["content"] = None if content_style == "none" else ""
    return message


def probe_template(tokenizer: PreTrainedTokenizerBase, jinja: str, specials: list[str] | None = None, with_tools: bool = False,
                   variables: Mapping[str, Any] | None = None) -> TemplateFeatures:
    """Render small conversations with and without each feature, once per template (`with_tools`: every one with a tools
    list, for a template that only renders conversations with tools), with the template's variables (enable_thinking=false
    changes Qwen3's generation prompt)."""
    specials = specials if specials is not None else _special_texts(tokenizer)

    def attempt(messages: list[dict], tools: Sequence[dict] | None = None, generation_prompt: bool = False) -> str | None:
        return _try(tokenizer, jinja, messages, tools, generation_prompt, variables)

    always = [PROBE_TOOL] if with_tools else None
    user, answer = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}
    plain = attempt([user, answer], always) or ""
    header, user_tail = _generation_header(tokenizer, jinja, [user], specials, always, variables)
    # what follows an answer before the next message (a template may end the conversation otherwise: Phi-3.5 adds eos)
    following = attempt([user, answer, {"role": "user", "content": "Nextprobezq"}], always) or plain
    after = following[following.rfind("Yo") + 2 :] if "Yo" in following else ""
    after = after[: after.find("Nextprobezq")] if "Nextprobezq" in after else after
    stops = _stop_texts(tokenizer)
    close, stop = _closing(after, specials, stops)
    # the last answer of a conversation may close otherwise: gpt-oss ends it with <|return|>, the token generation stops
    # on, and writes <|end|> after earlier answers (harmony's history form of the same end)
    last_close = _closing(plain[plain.rfind("Yo") + 2 :], specials, stops)[0] if "Yo" in plain else ""
    last_close = "" if last_close == close else last_close
    tails = {"user": user_tail}

    with_system = attempt([{"role": "system", "content": "Sysprobezq"}, user, answer], always)
    system = "refuses" if with_system is None else "keeps" if "Sysprobezq" in with_system else "drops"

    listed = attempt([user, answer], tools=[PROBE_TOOL])
    tools = listed is not None and (listed != plain or with_tools) and "probe_lookup_zq" in listed

    tool_calls = tool_results = short_ids = False
    parallel_calls, call_close = True, ""
    empty_content, arguments = "absent", "object"
    for content_style in ("absent", "none", "empty"):
        for argument_style in ("object", "json"):
            result = {"role": "tool", "content": "Resultprobezq", "tool_call_id": "call00001", "name": "probe_lookup_zq"}
            conversation = [user, _probe_call(content_style, argument_style), result]
            text = attempt(conversation + [answer], tools=[PROBE_TOOL])
            if text is None:
                continue
            empty_content, arguments = content_style, argument_style
            openai_ids = [dict(m, tool_calls=[dict(c, id=OPENAI_ID) for c in m["tool_calls"]]) if "tool_calls" in m else
                          dict(m, tool_call_id=OPENAI_ID) if m["role"] == "tool" else m for m in conversation + [answer]]
            short_ids = attempt(openai_ids, tools=[PROBE_TOOL]) is None
            tool_calls = "probeargzq" in text
            tool_results = "Resultprobezq" in text
            if tool_calls:  # what closes the call: from the first special token after its arguments, up to the result
                after_call = text[text.find("probeargzq") :]
                after_call = after_call[: after_call.find("Resultprobezq")] if "Resultprobezq" in after_call else after_call
                call_close = _from_first_special(_closing(after_call, specials, stops)[0], specials)
                call_close = "" if call_close == close else call_close
                two = dict(conversation[1], tool_calls=conversation[1]["tool_calls"] + [_second_call(conversation[1]["tool_calls"][0])])
                both = attempt([user, two, result, dict(result, tool_call_id="call00002"), answer], tools=[PROBE_TOOL])
                parallel_calls = both is None or "probeargyq" in both  # a template that refuses two calls says so itself
            tool_prompt = attempt(conversation, tools=[PROBE_TOOL], generation_prompt=True) or ""
            if "Resultprobezq" in tool_prompt:
                tails["tool"] = tool_prompt[tool_prompt.rfind("Resultprobezq") + len("Resultprobezq") :]
            break
        if text is not None:
            break

    reasoning_field = _reasoning_field(tokenizer, jinja, user, always, variables)

    def thinking(text: str) -> dict:
        if reasoning_field:
            return {"role": "assistant", "content": f"Answer{text}", reasoning_field: f"Thought{text}zq"}
        return {"role": "assistant", "content": f"<think>\nThought{text}zq\n</think>\n\nAnswer{text}"}

    two_turns = attempt([user, thinking("one"), {"role": "user", "content": "More"}, thinking("two")], always) or ""
    last, first = "Thoughttwozq" in two_turns, "Thoughtonezq" in two_turns
    reasoning = "all" if last and first else "last" if last else "none"
    # a generation prompt that is not in front of a rendered answer with reasoning, though it is in front of one without:
    # it has closed the reasoning block already (Qwen3's empty think block with enable_thinking false)
    with_thought = attempt([user, thinking("one")], always) or ""
    thinking_off = reasoning != "none" and bool(header) and header in plain and "Thoughtonezq" in with_thought and header not in with_thought
    return TemplateFeatures(header, close, tails, system, tools, tool_calls, tool_results, reasoning, reasoning_field,
                            empty_content, arguments, "<|im_start|>" in jinja, with_tools, short_ids, stop, last_close, call_close,
                            parallel_calls, thinking_off)


def _reasoning_field(tokenizer: PreTrainedTokenizerBase, jinja: str, user: dict, tools: list[dict] | None, variables: Mapping[str, Any] | None = None) -> str:
    """The field an answer's reasoning is read from, found by rendering a last answer with a different text in each:
    reasoning_content (Qwen3), thinking (gpt-oss). Both at once, because recent transformers copies one field into the
    other when only one is given. A template that renders neither but names reasoning_content drops it (the probe of
    two turns then says "none"); any other gets reasoning as a <think> block in the content."""
    fields = {"reasoning_content": "Contentprobezq", "thinking": "Thinkingprobezq"}
    text = _try(tokenizer, jinja, [user, {"role": "assistant", "content": "Yo", **fields}], tools, variables=variables) or ""
    return next((field for field, value in fields.items() if value in text), "reasoning_content" if "reasoning_content" in jinja else "")


def _second_call(call: dict) -> dict:
    function = call["function"]
    arguments = {"word": "probeargyq"} if isinstance(function["arguments"], dict) else '{"word": "probeargyq"}'
    return dict(call, id="call00002", function=dict(function, arguments=arguments))


def _from_first_special(text: str, specials: list[str]) -> str:
    """`text` from its first special token on (a closing text without the end of the arguments before it)."""
    found = [at for at in (text.find(token) for token in specials) if at >= 0]
    return text[min(found) :] if found else text


def _generation_header(tokenizer: PreTrainedTokenizerBase, jinja: str, messages: list[dict], specials: list[str], tools: list[dict] | None = None,
                       variables: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """For messages ending with the user turn "Hi": what the generation prompt adds (the assistant header), and the
    text between "Hi" and the answer (the user tail)."""
    prompt = _try(tokenizer, jinja, messages, tools, generation_prompt=True, variables=variables) or ""
    prompt_without = _try(tokenizer, jinja, messages, tools, variables=variables) or ""
    common = 0
    while common < min(len(prompt), len(prompt_without)) and prompt[common] == prompt_without[common]:
        common += 1
    for token in specials:  # never cut a special token in two ("<|assistant|>" after "<|endoftext|>" share "<|")
        at = prompt.find(token, max(0, common - len(token) + 1))
        if 0 <= at < common < at + len(token):
            common = at
    header = prompt[common:]
    return header, prompt[prompt.rfind("Hi") + 2 :] if "Hi" in prompt else header


def features_with_system(tokenizer: PreTrainedTokenizerBase, jinja: str, features: TemplateFeatures, system: str, specials: list[str],
                         variables: Mapping[str, Any] | None = None) -> TemplateFeatures:
    """The features for conversations with this system prompt. A template may open the answers by what the system prompt
    says: SmolLM3's generation prompt writes an empty think block after '/no_think', so there the block is part of the
    header, prompt rather than answer, and not trained."""
    if features.system != "keeps":
        return features
    header, user_tail = _generation_header(tokenizer, jinja, [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}], specials,
                                           [PROBE_TOOL] if features.with_tools else None, variables)
    if not header or header == features.header:
        return features
    tails = {role: tail[: len(tail) - len(features.header)] + header if features.header and tail.endswith(features.header) else tail
             for role, tail in features.tails.items()}
    return replace(features, header=header, tails={**tails, "user": user_tail})


def template_messages(messages: Sequence[Any], features: TemplateFeatures, fold_system: bool = False, tool_call_ids: str = "keep") -> list[dict]:
    """Messages as apply_chat_template expects them (OpenAI's shape, arguments as objects, reasoning_content), each
    tool-call id as data.tool_call_ids says (call_ids)."""
    ids = call_ids(tool_call_ids, features)
    out = []
    for m in messages:
        item: dict = {"role": m.role}
        content = m.content
        if m.role == "assistant" and m.reasoning:
            if features.reasoning_field:
                item[features.reasoning_field] = m.reasoning
            else:
                content = f"<think>\n{m.reasoning}\n</think>\n\n{content}"
        if m.tool_calls:
            item["tool_calls"] = [{"id": ids(c.id), "type": "function", "function": {
                "name": c.name, "arguments": c.arguments if features.arguments == "object" else json.dumps(c.arguments, ensure_ascii=False)}}
                for c in m.tool_calls]
            if content or features.empty_content != "absent":
                item["content"] = content or (None if features.empty_content == "none" else "")
        else:
            item["content"] = content
        if m.role == "tool":
            item["tool_call_id"] = ids(m.tool_call_id) if m.tool_call_id is not None else None
        if m.name:
            item["name"] = m.name
        out.append(item)
    if fold_system and out and out[0]["role"] == "system":
        system = out.pop(0)["content"]
        first_user = next((x for x in out if x["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = f"{system}\n\n{first_user['content']}"
    return out


def one_call_each(messages: Sequence[Message]) -> tuple[Message, ...]:
    """The messages with each assistant message of several tool calls split into one message per call, each followed by
    the result that answers it (matched by id, else in order): how harmony lays out parallel calls, which gpt-oss's
    template renders only one of per message. The first part keeps the content and reasoning; all keep the weight."""
    out: list[Message] = []
    k = 0
    while k < len(messages):
        m = messages[k]
        k += 1
        if m.role != "assistant" or len(m.tool_calls) < 2:
            out.append(m)
            continue
        results = []
        while k < len(messages) and messages[k].role == "tool":
            results.append(messages[k])
            k += 1
        by_id = {r.tool_call_id: r for r in results if r.tool_call_id is not None}
        unmatched = [r for r in results if r.tool_call_id not in {c.id for c in m.tool_calls}]
        for n, call in enumerate(m.tool_calls):
            out.append(replace(m, tool_calls=(call,)) if n == 0 else replace(m, content="", tool_calls=(call,), reasoning=None))
            answer = by_id.get(call.id) or (unmatched.pop(0) if unmatched else None)
            if answer is not None:
                out.append(answer)
        out += unmatched
    return tuple(out)


def call_ids(setting: str, features: TemplateFeatures) -> Callable[[str], str]:
    """data.tool_call_ids as a function of the id: 'remap' makes every id short_call_id's; 'auto', on a template that
    refuses OpenAI's ids, only those that are not 9 letters and digits already (data that suits the template stays as
    written); 'keep', or 'auto' elsewhere, keeps them."""
    if setting == "remap":
        return short_call_id
    if setting == "auto" and features.short_ids:
        return lambda original: original if _SHORT_ID.fullmatch(original) else short_call_id(original)
    return lambda original: original


def short_call_id(original: str) -> str:
    """A 9-character id of letters and digits made from a tool-call id, as Mistral's templates require: the same for a
    call and the result that names it, and for the same data every time (a hash, so no two ids of a conversation meet
    in practice: 62**9 values)."""
    digest = hashlib.sha256(original.encode()).digest()
    return "".join(_ALNUM[b % len(_ALNUM)] for b in digest[:9])


_ALNUM = string.ascii_letters + string.digits
_SHORT_ID = re.compile("[A-Za-z0-9]{9}")


def _wrap(text: str, k: int) -> str:
    """Markers around the text without its outer whitespace, so a template that trims renders the same text."""
    core = text.strip()
    if not core:
        return f"{text}{_OPEN}{k}{_OPEN_END}{_CLOSE}{k}{_CLOSE_END}"
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return f"{lead}{_OPEN}{k}{_OPEN_END}{core}{_CLOSE}{k}{_CLOSE_END}{trail}"


def _unmark(text: str) -> tuple[str, dict[int, int], dict[int, int]]:
    """The text without markers, and where each marked message's content begins and ends in it."""
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    pieces, at, clean_length = [], 0, 0
    for match in _MARK.finditer(text):
        pieces.append(text[at : match.start()])
        clean_length += match.start() - at
        at = match.end()
        k = int(match.group(2))
        if match.group(1) == _OPEN:
            starts.setdefault(k, clean_length)
        elif k in starts and k not in ends:
            ends[k] = clean_length
    pieces.append(text[at:])
    return "".join(pieces), starts, ends


class SpanError(Exception):
    """The turns of a rendered conversation could not be located; the message says which and why."""


def render_with_spans(tokenizer: PreTrainedTokenizerBase, jinja: str, features: TemplateFeatures, items: list[dict], tools: Sequence[dict] | None = None,
                      specials: list[str] | None = None, variables: Mapping[str, Any] | None = None) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and, per assistant message, (index in items, start, end) of its trained text."""
    marked = [dict(m, content=_wrap(m["content"], k)) if m["role"] in MARKED_ROLES and isinstance(m.get("content"), str) else m
              for k, m in enumerate(items)]
    text, starts, ends = _unmark(render(tokenizer, jinja, marked, tools, variables=variables))
    specials = specials if specials is not None else _special_texts(tokenizer)
    spans = []
    previous_end = 0
    for i, item in enumerate(items):
        if item["role"] != "assistant":
            if i in ends:
                previous_end = ends[i]
            continue
        if i == 0:
            raise SpanError("the conversation begins with an assistant message; begin it with a user (or system) message, "
                            "so there is something to answer.")
        before = items[i - 1]["role"]
        if before in MARKED_ROLES and i - 1 not in ends:
            raise SpanError(f"the chat template does not render message {i} ({before}), so the turn after it cannot be located.")
        following = next((starts[j] for j in range(i + 1, len(items)) if j in starts), len(text))
        anchors = _anchors(features, before, specials)
        start = None if anchors else previous_end  # a template with no header: the turn follows the message before it
        for anchor in anchors:
            at = text.find(anchor, previous_end, following)
            if at >= 0:
                start = at + len(anchor)
                if features.header.startswith(anchor):
                    start += _header_rest(features.header[len(anchor) :], text[start:following], specials)
                break
        if start is None:
            raise SpanError(f"could not find where assistant message {i + 1} begins in the rendered conversation "
                            f"(looked for {anchors[0]!r} after message {i}); the template lays this turn out unlike the others.")
        end = following
        if features.close:
            # Each kind of turn may close otherwise (gpt-oss: a call with <|call|>, the last answer with <|return|>, an earlier
            # one with <|end|>, which also ends the analysis message before an answer): the turn ends with whichever of its
            # closings comes last before the next message.
            closings = [c for c in (features.close, features.stop, features.call_close if item.get("tool_calls") else "",
                                    features.last_close if i == len(items) - 1 else "") if c]
            found = [(at + len(c), c) for c in closings if (at := text.rfind(c, start, following)) >= 0]
            if not found:
                raise SpanError(f"the chat template does not close assistant message {i + 1} with {features.close!r} as it does "
                                "elsewhere, so where it ends is unknown.")
            end, closing = max(found)
            if closing == features.close and features.last_close:
                # an earlier answer: its close is the history's copy of last_close, the token generation stops on, which the
                # model never writes; trained, it would learn to write it where it must stop, after the same context
                end -= len(closing)
        spans.append((i, start, end))
        previous_end = end
    return text, spans


def _header_rest(rest: str, text: str, specials: list[str]) -> int:
    """How much more of a header the text holds after a cut of it, through the last line end or special token they share:
    Qwen3 with enable_thinking false opens the last answer with an empty think block and earlier ones without, so an earlier
    answer begins after "<|im_start|>assistant\n", not after "<|im_start|>"."""
    shared = 0
    while shared < min(len(rest), len(text)) and rest[shared] == text[shared]:
        shared += 1
    ends = [k for k in range(1, shared + 1) if rest[k - 1] == "\n" or any(rest[:k].endswith(s) for s in specials)]
    return max(ends, default=0)


def _anchors(features: TemplateFeatures, before: str, specials: list[str]) -> list[str]:
    found = []
    if features.header:
        found += [features.header] + _cuts_after_specials(features.header, specials)
    tail = features.tails.get(before) or features.tails.get("user", "")
    if tail:
        found += [tail] + [tail[i:] for i in sorted({tail.rfind(s) for s in specials if s in tail}) if i > 0]
    return [a for k, a in enumerate(found) if a and a not in found[:k]]


def label_spans(offsets: Sequence[Sequence[int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token (its character offsets), whether it begins inside one of the spans."""
    import bisect

    spans = sorted(spans)
    starts = [s for s, _ in spans]
    out = []
    for begin, finish in offsets:
        k = bisect.bisect_right(starts, begin) - 1
        out.append(k >= 0 and begin < spans[k][1] and finish > begin)
    return out
