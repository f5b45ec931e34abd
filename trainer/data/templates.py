"""Chat templates: the tokenizer's own, a built-in one, or a Jinja string from the YAML.

The built-ins are written out here (not fetched) so they work offline, and each
names the text that ends a turn, which the loss mask must include so the model
learns to stop.
"""
from __future__ import annotations

from dataclasses import dataclass

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
BUILT_IN = {"chatml": (CHATML, "<|im_end|>"), "zephyr": (ZEPHYR, None), "llama3": (LLAMA3, "<|eot_id|>")}


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "tokenizer", a built-in name, or "custom"
    jinja: str
    turn_end: str | None  # the text that closes an assistant turn (None: the turn's last special token)


def resolve_template(setting: str, tokenizer) -> ChatTemplate:
    if setting in BUILT_IN:
        jinja, turn_end = BUILT_IN[setting]
        return ChatTemplate(setting, jinja, turn_end)
    if setting == "tokenizer":
        jinja = getattr(tokenizer, "chat_template", None)
        if isinstance(jinja, dict):  # some tokenizers keep several named templates
            jinja = jinja.get("default")
        if not jinja:
            raise UserError(
                "data.chat_template: the model's tokenizer has no chat template, so trainer cannot tell how to lay out "
                "a conversation. Set data.chat_template to chatml, zephyr or llama3 (or paste a Jinja template), "
                "or use data.format: text with train_on: all."
            )
        return ChatTemplate("tokenizer", jinja, None)
    return ChatTemplate("custom", setting, None)
