"""The reward of a grpo run: training.grpo.graders read into weighted graders, and the answers of a step scored.

An entry of training.grpo.graders is one of
  - a grader object as OpenAI writes it (type, name, ...), with trainer's optional `weight` among its keys;
  - the path of a YAML or JSON file holding one grader object (its name defaults to the file's stem);
  - {file: <path>, weight: <number>}: such a file, weighed.
An answer's reward is the weighted sum of its graders' scores. A grader that fails on an answer (grade() says why)
gives it 0, as trainer grade counts it; an answer no grader could score gets no reward (NaN): it is left out of its
group's mean and spread and its advantage is 0 (trainer/objectives/grpo.py), so a grader endpoint that is down for a
moment does not teach the model that every answer was wrong.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import Problem, UserError
from trainer.graders import Grade, Grader, grade, load_grader, read_grader
from trainer.graders.model import endpoint_problem
from trainer.graders.objects import Multi, ScoreModel

Where = tuple[Any, ...]  # a key path below training.grpo.graders: (index, key, ...)
# Answers graded at once: score_model graders wait on a server and python graders on a process each, so threads
# overlap them; builtin and string graders are quick either way.
GRADING_THREADS = 8


@dataclass(frozen=True)
class Reward:
    name: str  # unique in the run: the key of its metrics (reward_<name>)
    grader: Grader
    weight: float
    index: int  # its entry's place in training.grpo.graders


def read_rewards(entries: Sequence[str | Mapping[str, Any]], files: bool = True) -> tuple[list[Reward], list[tuple[Where, str]]]:
    """(the rewards, every problem as (path below training.grpo.graders, message)). `files=False` leaves out the
    entries naming a file that is not there (local_files_exist reports those where the config is run)."""
    rewards: list[Reward] = []
    problems: list[tuple[Where, str]] = []
    for index, entry in enumerate(entries):
        weight: Any = 1.0
        if isinstance(entry, str) or (isinstance(entry, Mapping) and "file" in entry):
            filename = entry if isinstance(entry, str) else entry["file"]
            if isinstance(entry, Mapping):
                weight = entry.get("weight", 1.0)
                problems += [((index, key), f"a grader file entry takes `file` and `weight`, not `{key}`.") for key in entry if key not in ("file", "weight")]
            if not isinstance(filename, str) or not filename:
                problems.append(((index, "file"), "`file` must be the path of a YAML or JSON file holding a grader object."))
                continue
            if not os.path.exists(os.path.expanduser(filename)):
                if files:
                    problems.append(((index,), f"no grader file {filename!r} (relative paths start from {os.getcwd()})."))
                continue
            try:
                grader = load_grader(os.path.expanduser(filename))
            except UserError as exc:
                problems.append(((index,), f"{filename}: the grader file has problems: " + "; ".join(str(p) for p in exc.problems)))
                continue
            name = grader.name if grader.name != "grader" else Path(filename).stem
        elif isinstance(entry, Mapping):
            weight = entry.get("weight", 1.0)
            found, found_problems = read_grader({k: v for k, v in entry.items() if k != "weight"}, (index,), str(entry.get("type", "grader")))
            problems += found_problems
            if found is None:
                continue
            grader, name = found, found.name
        else:
            problems.append(((index,), "a grader is a grader object (type: ..., name: ...) or the path of a grader file."))
            continue
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight == 0:
            problems.append(((index, "weight"), f"`weight` must be a number other than 0 (negative for a penalty), not {weight!r}."))
            continue
        if any(r.name == name for r in rewards):
            problems.append(((index,), f"two graders are named {name!r}; give each its own `name` (each is logged by its name)."))
            continue
        rewards.append(Reward(name, grader, float(weight), index))
    return rewards, problems


def load_rewards(entries: Sequence[str | Mapping[str, Any]]) -> list[Reward]:
    """The rewards, or a UserError listing every problem (the config's validation has reported them at their lines)."""
    rewards, problems = read_rewards(entries)
    if problems:
        raise UserError([Problem(message, "training.grpo.graders." + ".".join(map(str, path))) for path, message in problems],
                        title="the graders of training.grpo.graders have problems:")
    if not rewards:
        raise UserError("grpo learns from the scores of graders, and training.grpo.graders is empty; add one (docs/graders.md).")
    return rewards


def score_models(grader: Grader) -> Iterator[ScoreModel]:
    """The score_model graders in a grader, those inside a multi grader too."""
    if isinstance(grader, ScoreModel):
        yield grader
    elif isinstance(grader, Multi):
        for sub in grader.graders.values():
            yield from score_models(sub)


def endpoint_problems(rewards: Sequence[Reward]) -> Iterator[tuple[Reward, str]]:
    """(reward, what is missing) for each score_model grader whose endpoint cannot be called from here."""
    for reward in rewards:
        for model in score_models(reward.grader):
            if (why := endpoint_problem(model)) is not None:
                yield reward, why


@dataclass(frozen=True)
class Scored:
    """The grades of a step's answers: grades[answer][reward], and the rewards (NaN where no grader scored)."""

    grades: list[list[Grade]]
    rewards: list[float]

    def scores(self, reward: int) -> list[float]:
        """One reward's scores of every answer it graded (its failures left out)."""
        return [row[reward].score for row in self.grades if row[reward].error is None]

    @property
    def errors(self) -> list[str]:
        return [g.error for row in self.grades for g in row if g.error is not None]


def grade_answer(rewards: Sequence[Reward], text: str, item: Mapping[str, Any]) -> list[Grade]:
    """One answer's grade by every reward."""
    return [grade(r.grader, {"output_text": text}, item) for r in rewards]


def scored_from(rewards: Sequence[Reward], grades: list[list[Grade]]) -> Scored:
    """The weighted total of each answer's grades (NaN where no grader scored it)."""
    totals = [sum(r.weight * g.score for r, g in zip(rewards, row)) if any(g.error is None for g in row) else math.nan for row in grades]
    return Scored(grades, totals)


class Grading:
    """A round's answers graded on the pool as they come (in any order, each with its index); `scored()` waits for
    them all and gives them in index order, as score_answers would have graded them one after the other."""

    def __init__(self, rewards: Sequence[Reward], pool: ThreadPoolExecutor):
        self.rewards, self.pool = rewards, pool
        self.pending: dict[int, Future[list[Grade]]] = {}

    def submit(self, index: int, text: str, item: Mapping[str, Any]) -> None:
        if index in self.pending:
            raise ValueError(f"answer {index} was submitted twice")
        self.pending[index] = self.pool.submit(grade_answer, self.rewards, text, item)

    def scored(self, answers: int) -> Scored:
        """The grades of answers 0 .. answers-1, waiting for those still being graded."""
        if sorted(self.pending) != list(range(answers)):
            raise ValueError(f"{answers} answers were expected and answers {sorted(self.pending)} were submitted")
        return scored_from(self.rewards, [self.pending[i].result() for i in range(answers)])


def score_answers(rewards: Sequence[Reward], texts: Sequence[str], items: Sequence[Mapping[str, Any]], pool: ThreadPoolExecutor) -> Scored:
    """Every answer graded by every reward, answers in parallel on the pool; items[i] is answer i's data record."""
    grading = Grading(rewards, pool)
    for i, text in enumerate(texts):
        grading.submit(i, text, items[i])
    return grading.scored(len(texts))
