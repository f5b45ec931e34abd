"""The score_model grader: a model behind an OpenAI-compatible chat endpoint reads the filled-in messages and answers a score.

The endpoint: the grader's `base_url` (trainer's key; e.g. http://127.0.0.1:8000/v1 for `trainer serve`), else the
environment's OPENAI_BASE_URL, else OpenAI's. The key: the environment variable the grader's `api_key_env` names,
else OPENAI_API_KEY; with neither, a base_url of your own is called with the key "none" (`trainer serve` on this
machine needs none) and OpenAI's endpoint is refused, since it needs one. A key is never written in the grader file.
The request is made with the official `openai` client (60 s timeout by default, `timeout`; two retries).

The reply, read as OpenAI's score model grader reads it: OpenAI asks the model for structured output, a JSON object
{"steps": [{"description": ..., "conclusion": ...}], "result": <float>}, and the score is `result`. trainer sends the
same response_format (servers that do not enforce it, `trainer serve` among them, ignore it), and reads the first JSON
object in the reply (a ```json fence around it is fine) for a numeric `result` within `range`. A reply without one, or
with one outside the range, gives no score: the line's grade is 0 with the reason (trainer/graders/grade.py).
"""
from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from typing import Any

from trainer.graders.objects import ScoreModel

# OpenAI's score model output (its graders guide): the reasoning steps, then the score.
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "score", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["steps", "result"],
    "properties": {
        "steps": {"type": "array", "items": {"type": "object", "additionalProperties": False, "required": ["description", "conclusion"],
                                             "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}}}},
        "result": {"type": "number"},
    }}}}
# OpenAI's sampling_params names -> the chat completions request's (OpenAI spells the grader's max_completions_tokens with an s)
SAMPLING_PARAMS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "max_completions_tokens": "max_completion_tokens",
                   "reasoning_effort": "reasoning_effort"}


class ModelFailed(Exception):
    """The grader model gave no score for one line; the message says why."""


def endpoint_problem(grader: ScoreModel) -> str | None:
    """What is missing to call the grader's endpoint (a key for OpenAI's), or None."""
    if _base_url(grader) is None and _api_key(grader) is None:
        named = grader.api_key_env or "OPENAI_API_KEY"
        return (f"score_model calls OpenAI's endpoint, which needs a key: set {named}, or give `base_url` "
                "(e.g. http://127.0.0.1:8000/v1 for `trainer serve`).")
    return None


def _base_url(grader: ScoreModel) -> str | None:
    return grader.base_url or os.environ.get("OPENAI_BASE_URL") or None


def _api_key(grader: ScoreModel) -> str | None:
    return os.environ.get(grader.api_key_env or "OPENAI_API_KEY") or None


@lru_cache(maxsize=16)
def _client(base_url: str | None, api_key: str, timeout: float) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)


def ask_score(grader: ScoreModel, messages: list[dict[str, str]]) -> tuple[float, str]:
    """The score the model gives (and its reply); ModelFailed when there is none."""
    import openai

    problem = endpoint_problem(grader)
    if problem:
        raise ModelFailed(problem)
    params = {SAMPLING_PARAMS[k]: v for k, v in (grader.sampling_params or {}).items()}
    client = _client(_base_url(grader), _api_key(grader) or "none", grader.timeout)
    try:
        response = client.chat.completions.create(model=grader.model, messages=messages, response_format=RESPONSE_FORMAT, **params)
    except openai.APIError as exc:
        raise ModelFailed(f"the grader model's endpoint ({client.base_url}) answered an error: {exc}") from None
    reply = (response.choices[0].message.content or "") if response.choices else ""
    return parse_score(reply, grader.range), reply


def parse_score(reply: str, bounds: tuple[float, float]) -> float:
    """The `result` of the first JSON object in a grader model's reply, checked against the grader's range."""
    decoder = json.JSONDecoder()
    value: Any = None
    for start in (i for i, char in enumerate(reply) if char == "{"):
        try:
            value, _ = decoder.raw_decode(reply, start)
            break
        except json.JSONDecodeError:
            continue
    shown = reply.strip()[:200] or "(empty)"
    if not isinstance(value, dict):
        raise ModelFailed(f'the grader model\'s reply has no JSON object with a "result" score: {shown}')
    result = value.get("result")
    if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
        raise ModelFailed(f'the grader model\'s reply has no numeric "result": {shown}')
    low, high = bounds
    if not low <= result <= high:
        raise ModelFailed(f"the grader model's score {result:g} is outside the grader's range [{low:g}, {high:g}].")
    return float(result)
