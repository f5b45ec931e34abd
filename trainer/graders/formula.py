"""The `calculate_output` formula of a multi grader: arithmetic over the scores of its named graders.

A formula may use numbers, the graders' names, + - * / (and unary minus), parentheses, and the functions min, max,
abs, floor, ceil, sqrt, exp and log, e.g. `0.7 * correct + 0.3 * min(1, fluency / 5)`. It is checked when the grader is
read (every name and operator) and evaluated by simpleeval, which evaluates an expression without Python's eval(), with
only the operators and functions given to it. A formula that divides by zero, takes the log or square root of a
negative number, or gives inf or NaN does not score that line: the multi grader fails for it (score 0 and the reason;
trainer/graders/grade.py).
"""
from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

FUNCTIONS: dict[str, Callable[..., float]] = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil,
                                              "sqrt": math.sqrt, "exp": math.exp, "log": math.log}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALLOWED = "numbers, grader names, + - * /, parentheses and " + ", ".join(FUNCTIONS)


class FormulaFailed(Exception):
    """The formula gave no number for one line (a division by zero, a math domain error, inf or NaN)."""


def formula_problems(formula: str, names: Iterable[str]) -> list[str]:
    """Every reason `formula` cannot be evaluated over graders called `names`; [] when it can."""
    known = set(names)
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as exc:
        return [f"`{formula}` is not a formula ({exc.msg}); write e.g. 0.5 * a + 0.5 * b with {_ALLOWED}."]
    problems = []
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}  # judged with their call
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.expr_context, ast.operator, ast.unaryop, ast.keyword)) or id(node) in called:
            continue  # an operator is judged with its BinOp or UnaryOp
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY or isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            continue
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords and node.args:
                continue
            problems.append(f"`{ast.unparse(node)}`: the functions are {', '.join(FUNCTIONS)}, called with numbers.")
            continue
        if isinstance(node, ast.Name):
            if node.id not in known and node.id not in FUNCTIONS:
                problems.append(f"`{node.id}` is not one of the graders ({', '.join(sorted(known)) or 'none'}); the formula names graders by their key under `graders`.")
            continue
        problems.append(f"`{ast.unparse(node)}` is not allowed in a formula: it may use {_ALLOWED}.")
    return problems


def evaluate(formula: str, scores: Mapping[str, float]) -> float:
    """The formula's value for one line's scores; FormulaFailed when it has none."""
    from simpleeval import SimpleEval

    evaluator = SimpleEval(operators={**_BINARY, **_UNARY}, functions=FUNCTIONS, names=dict(scores))
    given = ", ".join(f"{name}={value:g}" for name, value in scores.items())
    try:
        value = float(evaluator.eval(formula.strip()))
    except ZeroDivisionError:
        raise FormulaFailed(f"calculate_output `{formula}` divides by zero for this line ({given}).") from None
    except (ValueError, OverflowError) as exc:
        raise FormulaFailed(f"calculate_output `{formula}` has no value for this line ({exc}; {given}).") from None
    if not math.isfinite(value):
        raise FormulaFailed(f"calculate_output `{formula}` gives {value} for this line ({given}).")
    return value
