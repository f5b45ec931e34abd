"""The grader objects, typed: what trainer/graders/parse.py builds from OpenAI's JSON shapes (and the builtin type of ours).

Each field is OpenAI's name and meaning unless marked as trainer's own. Templates are kept as their text; they are
checked when the object is built and rendered per line (trainer/graders/templates.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

STRING_CHECK_OPERATIONS = ("eq", "ne", "like", "ilike")  # eq/ne: equal or not, case-sensitive; like/ilike: contains, case-(in)sensitive


@dataclass(frozen=True)
class StringCheck:
    name: str
    operation: str
    input: str
    reference: str


@dataclass(frozen=True)
class TextSimilarity:
    name: str
    evaluation_metric: str
    input: str
    reference: str
    pass_threshold: float | None = None


@dataclass(frozen=True)
class Message:
    role: str  # system, developer, user or assistant
    content: str  # a template


@dataclass(frozen=True)
class ScoreModel:
    name: str
    model: str
    input: tuple[Message, ...]
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: Mapping[str, Any] | None = None  # temperature, top_p, seed, max_completions_tokens, reasoning_effort
    pass_threshold: float | None = None
    base_url: str | None = None  # trainer's: the OpenAI-compatible endpoint; default OPENAI_BASE_URL, else OpenAI's
    api_key_env: str | None = None  # trainer's: the environment variable holding the key; default OPENAI_API_KEY
    timeout: float = 60.0  # trainer's: seconds for one request (the client retries twice)


@dataclass(frozen=True)
class Python:
    name: str
    source: str  # defines grade(sample, item) -> float
    pass_threshold: float | None = None
    image_tag: str | None = None  # OpenAI's image of the grader sandbox; read and ignored: the code runs in this Python
    timeout: float = 120.0  # trainer's: wall-clock seconds (OpenAI's limit is 2 minutes)
    memory_mb: int = 2048  # trainer's: address-space limit (OpenAI gives 2 GB)


@dataclass(frozen=True)
class Builtin:
    """trainer's own: a measure the project already computes in `trainer eval`, usable as a grader by its metric name."""
    name: str
    metric: str
    input: str = "{{ sample.output_text }}"
    reference: str | None = None  # every metric but json_schema compares with a reference
    schema: Mapping[str, Any] | None = None  # json_schema: the JSON Schema the output must satisfy


@dataclass(frozen=True)
class Multi:
    name: str
    graders: Mapping[str, Grader]
    calculate_output: str  # a formula over the graders' names (trainer/graders/formula.py)


Grader = Union[StringCheck, TextSimilarity, ScoreModel, Python, Builtin, Multi]
