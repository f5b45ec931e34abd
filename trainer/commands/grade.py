"""The grade command: score answers with a grader (trainer/graders/), as reinforcement fine-tuning will."""
from __future__ import annotations

import argparse

from trainer.commands import Command, SubParsers


def _add_grade(sub: SubParsers) -> None:
    p = sub.add_parser("grade", help="score answers with a grader (OpenAI's grader objects)", description="Score each line of a .jsonl file of {\"item\": {...}, \"sample\": {\"output_text\": \"...\"}} with a grader (a YAML or JSON file: string_check, text_similarity, score_model, python, multi or builtin; docs/graders.md), and print each score, the sub-scores of a multi grader, and the mean. A line the grader cannot score gets 0 and the reason. Exit code 2 when the grader or the input has problems.")
    p.add_argument("--grader", "-g", required=True, metavar="FILE", help="the grader object, YAML or JSON")
    p.add_argument("--input", "-i", required=True, metavar="FILE", help='the answers: one {"item": {...}, "sample": {"output_text": "..."}} per line')
    p.add_argument("--json", action="store_true", help="print the grades as one JSON object")


def _grade(args: argparse.Namespace) -> int:
    import json

    from trainer.errors import Problem, UserError
    from trainer.graders import grade, load_grader
    from trainer.graders.answers import read_answers
    from trainer.graders.model import endpoint_problem
    from trainer.graders.objects import Multi, ScoreModel

    grader = load_grader(args.grader)
    answers = read_answers(args.input)
    pending = [grader]
    while pending:  # a score_model grader that cannot reach its endpoint would fail every line: said once, before any
        one = pending.pop()
        if isinstance(one, Multi):
            pending.extend(one.graders.values())
        elif isinstance(one, ScoreModel) and (problem := endpoint_problem(one)):
            raise UserError([Problem(problem, one.name, args.grader)])
    grades = [grade(grader, answer.sample, answer.item) for answer in answers]
    mean = sum(g.score for g in grades) / len(grades)
    failed = sum(g.error is not None for g in grades)
    if args.json:
        lines = [{"line": answer.line, **g.to_dict()} for answer, g in zip(answers, grades)]
        print(json.dumps({"grader": grader.name, "lines": lines, "mean": mean, "graded": len(grades), "failed": failed}, indent=2))
        return 0
    for answer, g in zip(answers, grades):
        parts = "  (" + ", ".join(f"{name}={'failed' if part.error else format(part.score, '.4g')}" for name, part in g.parts.items()) + ")" if g.parts else ""
        passed = "" if g.passed is None else ("  pass" if g.passed else "  fail")
        print(f"{args.input}:{answer.line}: {g.score:.4g}{parts}{passed}")
        if g.error:
            print("    no score: " + g.error.replace("\n", "\n    "))
    print(f"mean {mean:.4g} over {len(grades)} line{'s' * (len(grades) != 1)}"
          + (f"; {failed} could not be graded (scored 0, reasons above)" if failed else ""))
    return 0


GRADE = Command("grade", _add_grade, _grade)
