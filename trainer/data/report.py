"""The data report (`trainer data`): what was read, what is wrong, and what training will cost in tokens and steps."""
from __future__ import annotations

import math
import os
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from trainer.config import Config
from trainer.data.batching import length_grouped_batches, pack_examples, padding_fraction
from trainer.data.checks import CookbookChecks, checks_of, render_checks
from trainer.data.pipeline import PreparedData
from trainer.data.preference import Pair
from trainer.data.store import PairRows
from trainer.steps import planned_processes, steps_per_epoch


@dataclass(frozen=True)
class TokenStats:
    count: int
    minimum: int
    mean: float
    p50: float
    p90: float
    maximum: int
    total: int

    @classmethod
    def of(cls, values: list[int]) -> "TokenStats":
        if not values:
            return cls(0, 0, 0.0, 0.0, 0.0, 0, 0)
        ordered = sorted(values)
        return cls(len(values), ordered[0], statistics.fmean(values), _quantile(ordered, 0.5), _quantile(ordered, 0.9), ordered[-1], sum(values))


def _quantile(ordered: list[int], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    at = (len(ordered) - 1) * q
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


@dataclass(frozen=True)
class DataReport:
    tokens: TokenStats  # per training example, after truncation
    trained: TokenStats  # trained (in-the-loss) tokens per training example
    truncated: int  # examples longer than max_seq_length
    trained_lost: int  # trained tokens cut off by truncation
    duplicates: int  # training examples identical to an earlier one
    overlap: int  # validation examples that also appear in the training data
    steps_per_epoch: int
    padding_unpacked: float
    padding_packed: float
    rows_packed: int
    seconds_per_epoch: float | None  # from a measured throughput on this device, when one is known
    checks: CookbookChecks | None = None  # OpenAI cookbook's checks (data/checks.py)
    reasoning_dropped: int = 0  # assistant turns trained without the reasoning the data gives them (the template drops it)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def build_report(config: Config, data: PreparedData) -> DataReport:
    """The report from the columns of the prepared data (lengths, trained tokens, digests): no example is loaded.
    Token figures count each side of a preference pair as an example; batches hold whole pairs."""
    pairs = isinstance(data.train, PairRows)
    train = data.train.sides()
    lengths = data.train.lengths.tolist()
    batch = config.training.batch_size
    seed = config.training.seed
    batches = length_grouped_batches(lengths, batch, seed, 0)
    rows = pack_examples(lengths, config.data.max_seq_length, seed, 0)
    packed_batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    per_epoch = len(packed_batches) if config.data.packing else len(batches)
    steps = steps_per_epoch(per_epoch, planned_processes(config.distributed), config.training.gradient_accumulation)
    digests = train.column("digest")  # a hash of each example's ids: equal ids, equal digest
    trained = train.column("trained")
    full = train.column("full_length")
    throughput = known_throughput(config)
    chats = not pairs and len(train) and int(train.column("messages").max()) > 0
    return DataReport(
        tokens=TokenStats.of(lengths),
        trained=TokenStats.of(trained.tolist()),
        truncated=int(np.count_nonzero(full > config.data.max_seq_length)),
        trained_lost=int(train.column("trained_lost").sum()),
        duplicates=len(digests) - len(np.unique(digests)),
        overlap=int(np.isin(data.validation.sides().column("digest"), digests).sum()),
        steps_per_epoch=steps,
        padding_unpacked=padding_fraction(batches, lengths),
        padding_packed=padding_fraction(packed_batches, lengths, packed=True),
        rows_packed=len(rows),
        seconds_per_epoch=int(trained.sum()) / throughput if throughput else None,
        checks=checks_of(train.column("messages"), train.column("roles"), full, trained + train.column("trained_lost"),
                         config.data.max_seq_length, config.data.train_on) if chats else None,
        reasoning_dropped=int(train.column("reasoning_dropped").sum()),
    )


def known_throughput(config: Config) -> float | None:
    """Trained tokens per second that earlier runs of this configuration measured on this machine (trainer.throughput)."""
    from trainer.throughput import estimates, throughput_key

    return estimates().get(throughput_key(config))


def render_report(config: Config, data: PreparedData, report: DataReport) -> str:
    out = []
    for split in data.splits:
        out.append(f"{split.source}: {split.detection}")
        out.append(f"  {split.records} records, {split.kept} usable, {len(split.problems)} problem(s)")
        if split.fields.get("examples"):
            out.append("  " + _fields_line(split.fields))
        if split.variants:
            out.append("  the model's templates: " + ", ".join(f"{name} for {n} example(s)" for name, n in split.variants.items())
                       + (" (tool_use for those with tools, as apply_chat_template picks)" if len(split.variants) > 1 else ""))
        skipped_lines = sorted({p.line for p in split.problems if p.line is not None})
        if split.problems and config.data.on_invalid == "skip":
            out.append(f"  skipped (on_invalid: skip): {len(skipped_lines)} record(s), lines {_ranges(skipped_lines)}")
        out += _grouped_problems(split.problems)
    if data.features:
        out.append(f"Chat template features: {data.features}")
    if not data.train:
        out.append(f"No usable training examples: the problems above say why ({sum(len(s.problems) for s in data.splits)} in all).")
        return "\n".join(out)
    if report.reasoning_dropped:
        out.append(f"Reasoning: {report.reasoning_dropped} assistant turn(s) are trained without their reasoning, because the chat template "
                   "drops the reasoning of turns before the last user turn (it is never shown to the model there either). "
                   "Set data.turns: each to train every turn as it is generated, its reasoning included (more tokens).")
    held = f" (held out {config.data.validation_split:.0%} of the training data, seed {config.training.seed})" if data.held_out else ""
    unit = "Pairs" if isinstance(data.train, PairRows) else "Examples"
    out.append(f"{unit}: {len(data.train)} for training, {len(data.validation)} for validation{held}")
    out.append(f"Chat template: {data.template}; learning from: {config.data.train_on}")
    t, r = report.tokens, report.trained
    out.append("")
    out.append(f"{'tokens per example':<22}{'min':>8}{'mean':>9}{'p50':>9}{'p90':>9}{'max':>8}")
    out.append(f"{'  all':<22}{t.minimum:>8}{t.mean:>9.1f}{t.p50:>9.1f}{t.p90:>9.1f}{t.maximum:>8}")
    out.append(f"{'  trained (in loss)':<22}{r.minimum:>8}{r.mean:>9.1f}{r.p50:>9.1f}{r.p90:>9.1f}{r.maximum:>8}")
    share = r.total / t.total if t.total else 0
    out.append(f"Total tokens: {t.total}; trained tokens: {r.total} ({share:.1%} of all)")
    out.append(
        f"Longer than max_seq_length ({config.data.max_seq_length}): {report.truncated} example(s), "
        f"truncated; {report.trained_lost} trained token(s) lost"
    )
    out.append(f"Duplicates in training data: {report.duplicates}; validation examples also in training: {report.overlap}")
    if report.checks is not None:
        out += [""] + render_checks(report.checks)
    out.append("")
    processes = planned_processes(config.distributed)
    effective = config.training.batch_size * config.training.gradient_accumulation * processes
    mode = "packed" if config.data.packing else "length-grouped"
    over = f" over {processes} processes" if processes > 1 else ""
    out.append(f"Steps per epoch: {report.steps_per_epoch} ({mode} batches of {config.training.batch_size}, effective batch {effective}{over})")
    out.append(
        f"Padding: {report.padding_unpacked:.1%} of positions with length-grouped batches; "
        f"{report.padding_packed:.1%} with packing ({report.rows_packed} rows of {config.data.max_seq_length})"
    )
    if report.seconds_per_epoch is not None:
        epochs = config.training.epochs
        if not epochs:
            assert config.training.max_steps is not None  # rules.epochs_xor_max_steps: one of the two is set
            epochs = config.training.max_steps / max(report.steps_per_epoch, 1)
        out.append(f"Estimated time: {report.seconds_per_epoch * epochs / 60:.1f} min ({report.seconds_per_epoch / 60:.1f} min per epoch, from an earlier run on this machine)")
    else:
        out.append("Estimated time: not known yet; it is measured by the first training run on this machine.")
    return "\n".join(out)


def problem_kind(message: str) -> str:
    """A problem's message without its numbers and quoted values: problems of one kind read the same."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    return re.sub(r"\d+", "N", text).split(";")[0]


def _grouped_problems(problems: list, shown_kinds: int = 12, shown_each: int = 3) -> list[str]:
    """Problems grouped by kind, most frequent first: the count, then the first few with their file and line."""
    groups: dict[str, list] = defaultdict(list)
    for problem in problems:
        groups[problem_kind(problem.message)].append(problem)
    out = []
    for kind, members in sorted(groups.items(), key=lambda item: -len(item[1]))[:shown_kinds]:
        out.append(f"  {len(members)} x {members[0].message}")
        out += [f"      {p}" for p in members[:shown_each]]
        if len(members) > shown_each:
            out.append(f"      ... and {len(members) - shown_each} more like these")
    if len(groups) > shown_kinds:
        out.append(f"  ... and {len(groups) - shown_kinds} more kind(s) of problem")
    return out


def _fields_line(fields: dict) -> str:
    n = fields["examples"]
    share = lambda k: f"{fields[k]} ({fields[k] / n:.0%})"  # noqa: E731
    return (f"found: tools in {share('tools')}, tool calls in {share('tool_calls')}, reasoning in {share('reasoning')}, "
            f"multi-turn {share('multi_turn')}, system prompts in {share('system_prompt')} of {n} examples")


def show_examples(data: PreparedData, count: int) -> list[dict]:
    """The first `count` training examples as the model sees them: the rendered text and the character spans it learns."""
    from trainer.data.tokenize import IGNORE

    shown = []
    sides: Iterator[tuple[Any, Any]] = zip(data.examples(0, limit=count), data.train[:count])
    if isinstance(data.train, PairRows):  # each side of a pair as the model sees it: chosen, then rejected
        sides = ((e, t) for pair, both in sides if isinstance(pair, Pair) for e, t in ((pair.chosen, both.chosen), (pair.rejected, both.rejected)))
    for example, tokenized in sides:
        if example.text is not None or data.encoder is None:
            text = data.encoder.tok.decode(tokenized.input_ids) if data.encoder else ""
            shown.append({"file": example.file, "line": example.line, "text": text, "trained": [[0, len(text)]]})
            continue
        rendered = data.encoder.rendered(example)
        if not isinstance(rendered, tuple):
            continue
        text, _, ids, offsets = rendered
        spans: list[list[int]] = []
        for (begin, end), label in zip(offsets[: len(tokenized.labels)], tokenized.labels):
            if label == IGNORE or end <= begin:
                continue
            if spans and spans[-1][1] >= begin:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([begin, end])
        shown.append({"file": example.file, "line": example.line, "text": text, "trained": spans})
    return shown


def render_shown(shown: list[dict]) -> str:
    """Shown examples for a terminal: trained text between ⟦ and ⟧ (and in green where colours work)."""
    import sys

    color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    start, end = ("\x1b[32m⟦", "⟧\x1b[0m") if color else ("⟦", "⟧")
    out = []
    for i, item in enumerate(shown, 1):
        text, at, pieces = item["text"], 0, []
        for begin, finish in item["trained"]:
            pieces += [text[at:begin], start, text[begin:finish], end]
            at = finish
        pieces.append(text[at:])
        out += [f"--- example {i}: {item['file']}:{item['line']} (trained text between ⟦ and ⟧)", "".join(pieces)]
    return "\n".join(out)


def _ranges(numbers: list[int]) -> str:
    parts: list[list[int]] = []
    for n in numbers:
        if parts and parts[-1][1] == n - 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts) or "-"
