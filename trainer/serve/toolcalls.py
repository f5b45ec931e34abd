"""Tool calls in a served answer, turned into OpenAI's `tool_calls`. The calls are read by trainer.tools.hermes_calls,
the parser the tool_call_match metric uses (Hermes/Qwen style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`)."""
from __future__ import annotations

import json
import uuid
from typing import Any

from trainer.tools import ToolCall, hermes_calls


def openai_tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}


def answer_tool_calls(text: str, known: list[ToolCall] | None) -> tuple[str, list[dict[str, Any]]]:
    """split_tool_calls, or the calls the engine read from the answer's own format (gpt-oss's messages to functions)."""
    return (text, [openai_tool_call(call) for call in known]) if known is not None else split_tool_calls(text)


def split_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The answer's text without its well-formed tool calls, and those calls in OpenAI's shape.
    A malformed call (not JSON, no name) stays in the text, so the caller sees what the model wrote."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    at = 0
    for block in hermes_calls(text):
        if block.call is None:
            continue
        kept.append(text[at : block.start])
        calls.append(openai_tool_call(block.call))
        at = block.end
    kept.append(text[at:])
    return "".join(kept).strip(), calls
