"""Tool calls in a model's answer, in the Hermes/Qwen style most open chat templates use:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, turned into OpenAI's `tool_calls`."""
from __future__ import annotations

import json
import re
import uuid

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def split_tool_calls(text: str) -> tuple[str, list[dict]]:
    """The answer's text without its well-formed tool calls, and those calls in OpenAI's shape.
    A malformed call (not JSON, no name) stays in the text, so the caller sees what the model wrote."""
    calls: list[dict] = []

    def take(match: re.Match) -> str:
        try:
            payload = json.loads(match.group(1))
        except json.JSONDecodeError:
            return match.group(0)
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return match.group(0)
        arguments = payload.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": payload["name"],
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
        return ""

    rest = _CALL.sub(take, text)
    return rest.strip(), calls
