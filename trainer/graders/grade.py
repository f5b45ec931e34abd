"""Grading one sample: `grade(grader, sample, item)` -> a Grade, never an exception.

A grader that cannot score a line (a template reads a field the line lacks; a python grader raises, runs out of time
or memory, or returns something other than a finite number; the grader model is unreachable or answers no score in
range; a formula divides by zero) gives that line the score 0.0 and records why in `error`. One bad line must not
end a training run that grades thousands, and a reward of 0 is what a wrong answer gets; the error keeps the two
apart, and `trainer grade` counts and shows them. A multi grader fails as a whole when one of its graders fails
(its formula over a made-up 0 could reward a line it never scored), naming the one that failed.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.graders import builtin, formula, similarity
from trainer.graders.model import ModelFailed, ask_score
from trainer.graders.objects import Builtin, Grader, Multi, Python, ScoreModel, StringCheck, TextSimilarity
from trainer.graders.sandbox import GraderFailed, run_python_grader
from trainer.graders.templates import TemplateFailed, paths_read, render


@dataclass(frozen=True)
class Grade:
    score: float  # 0.0 when the grader failed
    error: str | None = None  # why the grader gave no score; None when it graded
    parts: Mapping[str, Grade] = field(default_factory=dict)  # a multi grader's graders, by name
    passed: bool | None = None  # score >= pass_threshold, for graders that have one

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"score": self.score, "error": self.error}
        if self.passed is not None:
            out["passed"] = self.passed
        if self.parts:
            out["parts"] = {name: part.to_dict() for name, part in self.parts.items()}
        return out


def sample_of(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The sample namespace, with output_json filled from output_text when that is JSON and output_json is not given
    (OpenAI fills it only under a response_format; an RL rollout has just the text)."""
    out = dict(sample)
    if "output_json" not in out and isinstance(out.get("output_text"), str):
        try:
            out["output_json"] = json.loads(out["output_text"])
        except (json.JSONDecodeError, ValueError):
            pass
    return out


def grade(grader: Grader, sample: Mapping[str, Any], item: Mapping[str, Any]) -> Grade:
    """The grade of one sample; a failure is a Grade with score 0 and its error, never an exception."""
    sample = sample_of(sample)
    try:
        if isinstance(grader, Multi):
            return _multi(grader, sample, item)
        score = _SCORERS[type(grader)](grader, sample, item)
    except (TemplateFailed, GraderFailed, ModelFailed, formula.FormulaFailed) as exc:
        return Grade(0.0, f"{grader.name}: {exc}")
    except Exception as exc:  # a metric library failing on an odd text: recorded for this line, the run goes on
        return Grade(0.0, f"{grader.name}: the grader failed: {type(exc).__name__}: {exc}")
    threshold = getattr(grader, "pass_threshold", None)
    return Grade(score, passed=None if threshold is None else score >= threshold)


def _string_check(grader: StringCheck, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
    text, reference = render(grader.input, sample, item), render(grader.reference, sample, item)
    # OpenAI's operations: eq/ne compare exactly; like/ilike ask whether the input contains the reference
    checks: dict[str, Callable[[str, str], bool]] = {"eq": str.__eq__, "ne": str.__ne__, "like": lambda t, r: r in t,
                                                    "ilike": lambda t, r: r.lower() in t.lower()}
    return float(checks[grader.operation](text, reference))


def _text_similarity(grader: TextSimilarity, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
    return similarity.SIMILARITIES[grader.evaluation_metric](render(grader.input, sample, item), render(grader.reference, sample, item))


def _score_model(grader: ScoreModel, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
    messages = [{"role": m.role, "content": render(m.content, sample, item)} for m in grader.input]
    return ask_score(grader, messages)[0]


def _python(grader: Python, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
    return run_python_grader(grader.source, sample, item, grader.timeout, grader.memory_mb)


def _builtin(grader: Builtin, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
    reference = render(grader.reference, sample, item) if grader.reference is not None else None
    return builtin.BUILTINS[grader.metric](render(grader.input, sample, item), reference, grader.schema)


def _multi(grader: Multi, sample: Mapping[str, Any], item: Mapping[str, Any]) -> Grade:
    parts = {name: grade(sub, sample, item) for name, sub in grader.graders.items()}
    failed = [f"{name}: {part.error}" if not part.error.startswith(f"{name}:") else part.error
              for name, part in parts.items() if part.error is not None]
    if failed:
        return Grade(0.0, f"{grader.name}: {len(failed)} of its graders failed, so calculate_output has no value: " + "; ".join(failed), parts)
    try:
        return Grade(formula.evaluate(grader.calculate_output, {name: part.score for name, part in parts.items()}), parts=parts)
    except formula.FormulaFailed as exc:
        return Grade(0.0, f"{grader.name}: {exc}", parts)


_SCORERS: dict[type, Callable[[Any, Mapping[str, Any], Mapping[str, Any]], float]] = {
    StringCheck: _string_check, TextSimilarity: _text_similarity, ScoreModel: _score_model, Python: _python, Builtin: _builtin,
}


def fields_read(grader: Grader) -> set[str]:
    """The item fields a grader reads, as dotted paths below item ("answer", "meta.source", "choices.0"), for checking
    them against the data before a run. A python grader's are what its source reads as item["x"] or item.get("x")
    with a literal key (what it computes at run time cannot be known before)."""
    if isinstance(grader, Multi):
        return set().union(*(fields_read(sub) for sub in grader.graders.values()))
    if isinstance(grader, Python):
        return _python_fields(grader.source)
    templates = {StringCheck: lambda g: [g.input, g.reference], TextSimilarity: lambda g: [g.input, g.reference],
                 ScoreModel: lambda g: [m.content for m in g.input], Builtin: lambda g: [g.input, g.reference or ""]}[type(grader)](grader)
    return {".".join(map(str, path[1:])) for text in templates for path in paths_read(text) if path[0] == "item" and len(path) > 1}


def _python_fields(source: str) -> set[str]:
    import ast

    fields = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "item" \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            fields.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "item" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            fields.add(node.args[0].value)
    return fields
