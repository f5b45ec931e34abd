"""trainer's built-in graders: what `trainer eval` already measures, usable as a grader by name.

    {type: builtin, metric: json_list_f1, reference: "{{ item.answer }}"}
    {type: builtin, metric: json_schema, schema: {type: object, required: [city]}}

`input` is the text graded (default `{{ sample.output_text }}`); `reference` a template for the expected answer.
The metrics are trainer/evaluation/metrics.py's and trainer/tools.py's, one line at a time, so a grader and the
evaluation report agree to the digit:
- exact_match, token_f1: SQuAD's normalisation (case, punctuation, spaces); rouge_l: rouge-score's F-measure.
- json_list_f1: F1 of the answer's JSON list of strings against the reference's, as sets; 0 when the answer is not one.
- tool_call_match: 1 when the answer calls the reference's functions with equal arguments (the reference a JSON list
  of calls), or makes no call where the reference is a text answer; else 0.
- json_schema: 1 when the answer is JSON that the grader's `schema` (a JSON Schema, any draft jsonschema knows) accepts, else 0.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from trainer.evaluation.metrics import exact_match, json_list_f1, rouge_l, token_f1
from trainer.tools import tool_call_match

# a built-in: (the rendered input, the rendered reference or None, the grader's schema or None) -> score
BuiltinMetric = Callable[[str, "str | None", "Mapping[str, Any] | None"], float]


def _one(metric: Callable[[list[str], list[str]], dict[str, float]], key: str) -> BuiltinMetric:
    def score(text: str, reference: str | None, schema: Mapping[str, Any] | None) -> float:
        return metric([text], [reference or ""])[key]

    return score


def _json_schema(text: str, reference: str | None, schema: Mapping[str, Any] | None) -> float:
    import jsonschema

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return 0.0
    validator = jsonschema.validators.validator_for(schema)(schema)
    return float(validator.is_valid(value))


BUILTINS: dict[str, BuiltinMetric] = {
    "exact_match": _one(exact_match, "exact_match"),
    "token_f1": _one(token_f1, "token_f1"),
    "rouge_l": _one(rouge_l, "rouge_l"),
    "json_list_f1": _one(json_list_f1, "json_list_f1"),
    "tool_call_match": _one(tool_call_match, "tool_call_match"),
    "json_schema": _json_schema,
}
NEEDS_REFERENCE = ("exact_match", "token_f1", "rouge_l", "json_list_f1", "tool_call_match")


def schema_problem(schema: Any) -> str | None:
    """What is wrong with a json_schema grader's schema, or None."""
    import jsonschema

    if not isinstance(schema, dict):
        return "json_schema needs `schema`: a JSON Schema as a section, e.g. {type: object, required: [answer]}."
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(map(str, exc.path)) or "the top"
        return f"the schema is not a valid JSON Schema at {where}: {exc.message}."
    return None
