"""How sure the evaluation is: 95% bootstrap intervals over cases, and paired intervals of "tuned minus X".

Every system answers the same cases, so one resampling of the case indices serves all of them: the interval
of a difference is taken over the same resampled cases for both systems (a paired bootstrap), which is much
narrower than two separate intervals when the systems agree on which cases are hard.

A metric is a ratio per resample: sum of per-case numerators over sum of per-case denominators. For the answer
metrics the denominator is 1 (a plain mean over cases); for the loss it is the number of answer tokens, so the
bootstrapped loss is the same token-weighted mean `trainer eval` reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class PerCase:
    """A metric's per-case parts: the metric over a set of cases is sum(numerators) / sum(denominators)."""

    numerators: tuple[float, ...]
    denominators: tuple[float, ...]

    @classmethod
    def of_means(cls, scores: list[float]) -> PerCase:
        return cls(tuple(scores), (1.0,) * len(scores))

    @property
    def value(self) -> float:
        total = sum(self.denominators)
        return sum(self.numerators) / total if total else float("nan")


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Difference:
    """tuned minus another system on one metric, with its paired interval."""

    value: float
    low: float
    high: float
    cases: int
    better: str  # "tuned" or "other" where the interval excludes zero, else "unclear"
    cases_needed: int | None  # at the observed spread, how many cases would make this difference measurable

    def to_dict(self) -> DifferenceDict:
        return {"difference": self.value, "ci95": [self.low, self.high], "cases": self.cases, "better": self.better,
                "cases_needed": self.cases_needed}


class DifferenceDict(TypedDict):
    """A Difference as eval.json writes it."""

    difference: float
    ci95: list[float]
    cases: int
    better: str
    cases_needed: int | None


class Confidence(TypedDict):
    intervals: dict[str, dict[str, Interval]]  # {system: {metric: Interval}}
    differences: dict[str, dict[str, Difference]]  # {other system: {metric: tuned minus other}}


def resample_indices(n: int, seed: int, resamples: int = RESAMPLES) -> NDArray[np.int64]:
    """(resamples, n) case indices drawn with replacement; the same seed gives the same draws."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _ratios(per_case: PerCase, draws: NDArray[np.int64]) -> NDArray[np.float64]:
    import numpy as np

    numerators = np.asarray(per_case.numerators, dtype=float)[draws].sum(axis=1)
    denominators = np.asarray(per_case.denominators, dtype=float)[draws].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerators / denominators


def _bounds(values: NDArray[np.float64]) -> tuple[float, float]:
    import numpy as np

    tail = (1 - LEVEL) / 2 * 100
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def interval(per_case: PerCase, draws: NDArray[np.int64]) -> Interval:
    return Interval(per_case.value, *_bounds(_ratios(per_case, draws)))


def difference(tuned: PerCase, other: PerCase, draws: NDArray[np.int64], lower_is_better: bool = False) -> Difference:
    value = tuned.value - other.value
    low, high = _bounds(_ratios(tuned, draws) - _ratios(other, draws))
    n = len(tuned.numerators)
    if low > 0 or high < 0:
        tuned_better = (low > 0) != lower_is_better
        return Difference(value, low, high, n, "tuned" if tuned_better else "other", None)
    return Difference(value, low, high, n, "unclear", cases_needed(value, low, high, n))


def cases_needed(value: float, low: float, high: float, n: int) -> int | None:
    """Cases at which an interval as wide as this one (per case, shrinking as 1/sqrt(n)) would just exclude zero.

    None when no difference was observed at all: no number of cases makes a zero difference measurable.
    """
    half_width = (high - low) / 2
    if value == 0 or not math.isfinite(half_width) or half_width == 0:
        return None
    return max(n + 1, math.ceil(n * (half_width / abs(value)) ** 2))


def confidence(per_case: dict[str, dict[str, PerCase]], seed: int, lower_is_better: set[str]) -> Confidence:
    """The interval of every system's metrics, and the paired intervals of "tuned minus other".

    per_case: {system: {metric: PerCase}}; differences are "tuned minus other" and only present with a tuned system.
    """
    systems = list(per_case)
    if not systems:
        return {"intervals": {}, "differences": {}}
    n = len(next(iter(next(iter(per_case.values())).values())).numerators)
    draws = resample_indices(n, seed)
    intervals = {name: {metric: interval(parts, draws) for metric, parts in metrics.items()} for name, metrics in per_case.items()}
    differences: dict[str, dict[str, Difference]] = {}
    if "tuned" in per_case:
        for name in systems:
            if name == "tuned":
                continue
            differences[name] = {metric: difference(parts, per_case[name][metric], draws, metric in lower_is_better)
                                 for metric, parts in per_case["tuned"].items() if metric in per_case[name]}
    return {"intervals": intervals, "differences": differences}
