"""The lines `trainer grade --input` reads: one {"item": {...}, "sample": {"output_text": "..."}} per line, the shape
OpenAI's grader-run endpoint takes. Every line is checked before any is graded; the problems name file:line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trainer.errors import Problem, UserError

_SHAPE = '{"item": {"answer": "..."}, "sample": {"output_text": "..."}}'


@dataclass(frozen=True)
class Answer:
    line: int  # 1-based, in the file
    item: dict[str, Any]
    sample: dict[str, Any]


def read_answers(path: str) -> list[Answer]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file. Give --input a .jsonl file of {_SHAPE} lines.") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; give --input a .jsonl file.") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: the file is not UTF-8 text ({exc.reason}). Save it as UTF-8.") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}).") from None
    answers, problems = [], []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"not valid JSON ({exc.msg}, column {exc.colno}); each line is one JSON object: {_SHAPE}.", "", path, number))
            continue
        why = _shape_problem(value)
        if why:
            problems.append(Problem(why, "", path, number))
            continue
        answers.append(Answer(number, value.get("item") or {}, value["sample"]))
    if problems:
        raise UserError(problems, title=f"{path}: {len(problems)} line{'s' * (len(problems) != 1)} cannot be graded:")
    if not answers:
        raise UserError(f"{path}: the file has no lines to grade; write one {_SHAPE} per line.")
    return answers


def _shape_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"a line is a JSON object {_SHAPE}, not {type(value).__name__}."
    unknown = sorted(set(value) - {"item", "sample"})
    if unknown:
        return f"unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)}; a line has `item` (the data) and `sample` (the model's output)."
    if not isinstance(value.get("item", {}), dict):
        return "`item` must be an object of the data's fields."
    sample = value.get("sample")
    if not isinstance(sample, dict):
        return 'the line has no `sample` object; write the model\'s answer as "sample": {"output_text": "..."}.'
    if "output_text" in sample and not isinstance(sample["output_text"], str):
        return "sample.output_text must be text."
    return None
