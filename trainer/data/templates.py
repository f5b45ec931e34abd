"""Chat templates: the tokenizer's own, a built-in one, or a Jinja string from the YAML.

The built-ins are written out here (not fetched) so they work offline, and each
names the text that ends a turn, which the loss mask must include so the model
learns to stop.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from trainer.errors import UserError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# ChatML with tools, tool calls and reasoning in the widely used Hermes / Qwen layout: the tools as JSON lines in
# <tools></tools> in the system turn, each call as {"name": ..., "arguments": {...}} in <tool_call></tool_call>,
# results in <tool_response></tool_response> inside a user turn, reasoning in <think></think>. Written for trainer
# (not copied); it renders every turn the same whatever follows, so all reasoning is kept.
HERMES = (
    "{%- set first_system = messages and messages[0].role == 'system' %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}{% if first_system %}{{- messages[0].content + '\\n\\n' }}{% endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to help with the request. Their signatures (JSON Schema) are within <tools></tools>:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{% endfor %}"
    "{{- '\\n</tools>\\n\\nTo call a function, answer with a JSON object per call within <tool_call></tool_call> tags:\\n"
    "<tool_call>\\n{\"name\": <function name>, \"arguments\": <arguments object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif first_system %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.reasoning_content %}{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}{% endif %}"
    "{%- if message.content %}{{- message.content }}{% endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{% endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' + (call.function.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{% endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{% endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{% endif %}"
)
# Tokens that end an answer besides the tokenizer's eos: generation stops on them, and a trained turn ends with the
# first of them that follows the answer (masks.probe_template). gpt-oss (harmony) stops on <|return|> after an answer
# and <|call|> after a tool call.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|END_OF_TURN_TOKEN|>", "<|return|>", "<|call|>")
BUILT_IN = {"chatml": (CHATML, "<|im_end|>"), "zephyr": (ZEPHYR, None), "llama3": (LLAMA3, "<|eot_id|>"), "hermes": (HERMES, "<|im_end|>")}


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "tokenizer", a built-in name, "custom", or the name of one of the tokenizer's templates ("tool_use")
    jinja: str
    turn_end: str | None  # the text that closes an assistant turn (None: the turn's last special token)
    variant: str | None = None  # which of the tokenizer's named templates this is, when it keeps several (Hermes 3, Command-R)
    tool_use: ChatTemplate | None = None  # the template apply_chat_template picks instead for a conversation with tools
    variables: Mapping[str, Any] = field(default_factory=dict)  # data.template_kwargs: given to every render as apply_chat_template(**variables)

    def for_tools(self, tools: Any) -> ChatTemplate:
        """The template apply_chat_template(tools=...) renders this conversation with: the tokenizer's "tool_use" one
        when the conversation has tools and the tokenizer has one, else this."""
        return self.tool_use if tools and self.tool_use is not None else self

    def variants(self) -> list[ChatTemplate]:
        return [self] + ([self.tool_use] if self.tool_use is not None else [])

    @property
    def key(self) -> str:
        """Every template that may render a conversation and the variables they get, as one text (what the data cache is
        keyed by; a pinned date is in the templates' text)."""
        return "\0".join([t.jinja for t in self.variants()] + [json.dumps(dict(self.variables), sort_keys=True)])

    def reads(self) -> set[str]:
        """The variables the templates read from their caller (a superset: also names a template sets before reading)."""
        import jinja2.meta
        from transformers.utils.chat_template_utils import _compile_jinja_template

        environment = _compile_jinja_template("").environment  # transformers' own sandbox, with its extensions
        return set().union(*(jinja2.meta.find_undeclared_variables(environment.parse(t.jinja)) for t in self.variants()))

    def unread(self) -> list[str]:
        """The variables none of the templates reads (a misspelt reasoning_effort would change nothing, silently)."""
        read = self.reads()
        return [name for name in self.variables if name not in read]


def pinned_clock(jinja: str, date: str) -> str:
    """The template with its clock stopped at `date` (YYYY-MM-DD): transformers gives templates strftime_now(format),
    today's date, so a render made today and one made tomorrow differ, and a cached render would go stale by the day.
    The clock is replaced by a macro of the same name at the top, which writes the pinned date in the formats templates
    use (%Y-%m-%d for gpt-oss, "%d %B %Y" for SmolLM3, "%d %b %Y" for Llama 3.2). A macro, because transformers turns
    every function passed to a render into a string; defined first, it shadows the global in the whole template. A
    template that has no clock is returned as it is."""
    if "strftime_now" not in jinja:
        return jinja
    day = datetime.date.fromisoformat(date)
    fields = "".join(f" | replace('%{code}', '{day.strftime('%' + code)}')" for code in "YmdBbAayjeHMS")
    return "{%- macro strftime_now(format) -%}{{- format" + fields + " -}}{%- endmacro -%}" + jinja


def with_variables(template: ChatTemplate, variables: Mapping[str, Any], date: str | None) -> ChatTemplate:
    """The template (and its tool_use one) with data.template_kwargs and, for the training data's renders,
    data.template_date's clock."""
    tool_use = with_variables(template.tool_use, variables, date) if template.tool_use is not None else None
    jinja = pinned_clock(template.jinja, date) if date else template.jinja
    return replace(template, jinja=jinja, tool_use=tool_use, variables=dict(variables))


def template_of(data: Any, tokenizer: Any, pinned: bool = True) -> ChatTemplate:
    """The chat template data.chat_template names, with data.template_kwargs; `pinned`: its clock at data.template_date
    (the training data's renders; generate, chat, serve and evaluation answers show the real date)."""
    return with_variables(resolve_template(data.chat_template, tokenizer), data.template_kwargs, data.template_date if pinned else None)


def resolve_template(setting: str, tokenizer: Any) -> ChatTemplate:
    if setting in BUILT_IN:
        jinja, turn_end = BUILT_IN[setting]
        return ChatTemplate(setting, jinja, turn_end)
    found: Any = getattr(tokenizer, "chat_template", None)
    named: dict = found if isinstance(found, dict) else {}  # a list of named templates in tokenizer_config.json, as transformers loads it
    if setting == "tokenizer":
        if named:  # apply_chat_template's own choice: "tool_use" for a conversation with tools, else "default"
            if not named.get("default"):
                raise UserError(f"data.chat_template: the model's tokenizer has no 'default' template, only {_names(named)}; "
                                "set data.chat_template to the one to train with.")
            tool_use = ChatTemplate("tokenizer", named["tool_use"], None, "tool_use") if named.get("tool_use") else None
            return ChatTemplate("tokenizer", named["default"], None, "default", tool_use)
        if not found:
            raise UserError(
                "data.chat_template: the model's tokenizer has no chat template, so trainer cannot tell how to lay out "
                "a conversation. Set data.chat_template to chatml, zephyr, llama3 or hermes (ChatML with tools) (or paste a Jinja template), "
                "or use data.format: text with train_on: all."
            )
        return ChatTemplate("tokenizer", found, None)
    if is_jinja(setting):
        return ChatTemplate("custom", setting, None)
    if setting in named:  # one of the tokenizer's named templates, for every conversation
        return ChatTemplate(setting, named[setting], None, setting)
    has = f"its templates are {_names(named)}" if named else "it has a single template (data.chat_template: tokenizer)"
    raise UserError(f"data.chat_template: {setting!r} is not a built-in template ({', '.join(BUILT_IN)}) nor one of the model's "
                    f"named templates: {has}.")


def is_jinja(text: str) -> bool:
    return "{{" in text or "{%" in text


def _names(named: dict) -> str:
    return ", ".join(repr(name) for name in named)
