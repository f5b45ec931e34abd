"""Answer-quality metrics, each a plain function of (prediction, reference) lists.

exact_match and token_f1 normalise case, punctuation and whitespace (as SQuAD's
evaluation does); rouge_l comes from Google's rouge-score package; json_list_f1
scores answers that should be a JSON list of strings as a set, and reports the
share of answers that parsed as one.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", text.lower())).strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    scores = [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)]
    return {"exact_match": _mean(scores)}


def _f1(predicted: Counter[str], expected: Counter[str]) -> float:
    if not predicted and not expected:
        return 1.0
    common = sum((predicted & expected).values())
    if common == 0:
        return 0.0
    precision = common / sum(predicted.values())
    recall = common / sum(expected.values())
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    scores = [_f1(Counter(normalize(p).split()), Counter(normalize(r).split())) for p, r in zip(predictions, references)]
    return {"token_f1": _mean(scores)}


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return {"rouge_l": _mean(scores)}


def parse_json_list(text: str) -> set[str] | None:
    """The answer as a set of normalised strings, or None if it is not a JSON list of strings."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return {_SPACES.sub(" ", v.lower()).strip() for v in value}


def json_list_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    scores, parsed = [], 0
    for p, r in zip(predictions, references):
        got, want = parse_json_list(p), parse_json_list(r)
        if want is None:
            want = {_SPACES.sub(" ", r.lower()).strip()}
        if got is None:
            scores.append(0.0)
            continue
        parsed += 1
        scores.append(_f1(Counter(got), Counter(want)))
    return {"json_list_f1": _mean(scores), "json_parsed": parsed / len(scores) if scores else 0.0}


def _tool_call_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from trainer.tools import tool_call_match

    return tool_call_match(predictions, references)


# a metric: predictions and references in, its value (or values) over all of them out
Metric = Callable[[Sequence[str], Sequence[str]], dict[str, float]]
METRICS: dict[str, Metric] = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l, "json_list_f1": json_list_f1,
           "tool_call_match": _tool_call_match}
# every number `trainer eval` reports per system under its own name (the metrics' keys, then the costs): a grader in
# evaluation.graders is reported by its name, so it must not take one of these
METRIC_KEYS = ("loss", "perplexity", "exact_match", "token_f1", "rouge_l", "json_list_f1", "json_parsed", "tool_call_match", "tool_call_wellformed")
COSTS = ("prompt_tokens_mean", "generated_tokens_mean", "seconds_per_example")
RESERVED = frozenset(METRIC_KEYS + COSTS)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
