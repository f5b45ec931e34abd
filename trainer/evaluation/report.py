"""The evaluation report: a terminal table, eval.json, eval.md (with intervals, the token saving and examples) and eval.png."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from trainer.evaluation.intervals import Difference, Interval
from trainer.evaluation.metrics import COSTS, METRIC_KEYS
from trainer.evaluation.runner import LOWER_IS_BETTER, SYSTEMS, Evaluation, PreferenceScores

# {system: {metric or cost: value}}, as eval.json writes each system's numbers
Scores = Mapping[str, Mapping[str, float]]
# {system: {metric: [low, high]}}
Bounds = dict[str, dict[str, list[float]]]

SHOWN = METRIC_KEYS  # in this order, then the graders (evaluation.graders)


def main_metric(metrics: tuple[str, ...]) -> str:
    answer_metrics = [m for m in metrics if m != "loss"]
    return answer_metrics[-1] if answer_metrics else "loss"


LABELS = {"base_zero_shot": "the untuned model (zero-shot)", "base_few_shot": "few-shot prompting",
          "base_retrieval": "retrieval of similar examples (RAG)", "start": "the adapter it started from (model.adapter)"}


def verdict(results: Scores, metric: str, differences: Mapping[str, Mapping[str, Difference]] | None = None) -> list[str]:
    """Plain sentences: did the tuned model beat each baseline on the main metric, and how sure that is.

    "beat" only where the paired 95% interval of the difference excludes zero; otherwise the difference is called
    not measurable on this many cases, with the number of cases that would measure it at the observed spread.
    """
    lines = []
    if "tuned" not in results:
        return ["No fine-tuned model was evaluated (evaluation.systems): the baselines above are what it has to beat."]
    tuned = results["tuned"][metric]
    for name, label in LABELS.items():
        if name not in results:
            continue
        other = results[name][metric]
        found = (differences or {}).get(name, {}).get(metric)
        if found is None:  # no per-case data: the plain comparison of means
            better = tuned < other if metric in LOWER_IS_BETTER else tuned > other
            if tuned == other:
                lines.append(f"The fine-tuned model tied with {label} on {metric}: both {tuned:.3f}.")
            elif better:
                lines.append(f"The fine-tuned model beat {label} on {metric}: {tuned:.3f} against {other:.3f} ({abs(tuned - other):+.3f} better).")
            else:
                lines.append(f"The fine-tuned model did NOT beat {label} on {metric}: {tuned:.3f} against {other:.3f} ({abs(tuned - other):.3f} worse).")
            continue
        ci = f"difference {found.value:+.3f}, 95% CI {found.low:+.3f} to {found.high:+.3f}, {found.cases} cases"
        if found.better == "tuned":
            lines.append(f"The fine-tuned model beat {label} on {metric}: {tuned:.3f} against {other:.3f} ({ci}).")
        elif found.better == "other":
            lines.append(f"The fine-tuned model did NOT beat {label} on {metric}: {tuned:.3f} against {other:.3f} ({ci}); {label} is better.")
        elif found.cases_needed is None:
            lines.append(f"The fine-tuned model and {label} scored the same on {metric} ({tuned:.3f}) on {found.cases} cases: "
                         "no difference to measure.")
        else:
            lines.append(f"The difference between the fine-tuned model and {label} on {metric} is not measurable on "
                         f"{found.cases} cases: {tuned:.3f} against {other:.3f} ({ci}); at the observed spread about "
                         f"{found.cases_needed} cases would be needed.")
    for name, label in (("base_few_shot", "few-shot prompting"), ("base_retrieval", "retrieval")):
        if name in results and results[name]["prompt_tokens_mean"] > 0:
            theirs, mine = results[name]["prompt_tokens_mean"], results["tuned"]["prompt_tokens_mean"]
            lines.append(f"It needs {mine:.0f} prompt tokens per request instead of {label}'s {theirs:.0f}: {1 - mine / theirs:.0%} fewer.")
    return lines


def preference_sentence(found: PreferenceScores | None) -> list[str]:
    """The tuned model on the validation pairs (dpo, orpo): how often it prefers the chosen answer, and by how much."""
    if not found:
        return []
    acc, margin = found["reward_accuracy_ci95"], found["reward_margin_ci95"]
    return [f"On {found['pairs']} validation pairs the tuned model gains more on the chosen answer than on the rejected one in "
            f"{found['reward_accuracy']:.0%} of them (reward accuracy, 95% CI {acc[0]:.0%} to {acc[1]:.0%}), by a mean reward margin "
            f"of {found['reward_margin']:.3f} (95% CI {margin[0]:.3f} to {margin[1]:.3f})."]


def _cell(value: float, ci: list[float] | None) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def table(results: Scores, metrics: list[str], intervals: Bounds | None = None) -> list[list[str]]:
    """One row per system; a metric cell is "value [95% CI]" where the interval is known."""
    rows = [["system"] + metrics + ["prompt tokens", "generated tokens", "s/example"]]
    for name in [n for n in SYSTEMS if n in results]:
        r, ci = results[name], (intervals or {}).get(name, {})
        rows.append([name] + [_cell(r[m], ci.get(m)) if m in r else "-" for m in metrics]
                    + [f"{r[c]:.1f}" if c != "seconds_per_example" else f"{r[c]:.2f}" for c in COSTS])
    return rows


def _plain_intervals(intervals: dict[str, dict[str, Interval]]) -> Bounds:
    """{system: {metric: [low, high]}}, perplexity as exp of the loss interval."""
    import math

    out: Bounds = {}
    for name, metrics in intervals.items():
        out[name] = {m: i.to_list() for m, i in metrics.items()}
        if "loss" in out[name]:
            out[name]["perplexity"] = [math.exp(min(v, 50)) for v in out[name]["loss"]]
    return out


def code_block(text: str) -> str:
    """Text shown as it is in Markdown: a fenced block, its fence longer than any run of backticks inside (a model's
    answer with bullets or a stray backtick, shown inline, was rendered as a list or broke the page)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def write_report(run_dir: Path, evaluation: Evaluation) -> str:
    """Write eval.json, eval.md and eval.png. The verdict is on the first grader when there are graders (what the user
    wrote down as a good answer: a grpo run's reward), else on the last answer metric of evaluation.metrics."""
    cases = evaluation.cases
    results = {name: found.scores for name, found in evaluation.results.items()}
    answers = {name: found.answers for name, found in evaluation.results.items()}
    systems = [n for n in SYSTEMS if n in results]
    first = results["tuned" if "tuned" in results else systems[0]]
    present = [m for m in SHOWN if m in first] + list(evaluation.graders)
    metric = evaluation.graders[0] if evaluation.graders else main_metric(evaluation.metrics)
    intervals = _plain_intervals(evaluation.intervals)
    differences = evaluation.differences
    rows = table(results, present, intervals)
    failures = {name: {g: errors for g, errors in found.grader_errors.items() if errors} for name, found in evaluation.results.items()}
    words = verdict(results, metric, differences) + preference_sentence(evaluation.preference) + grader_failures(failures, len(cases))

    data: dict[str, object] = {name: {**results[name], "ci95": intervals.get(name, {}),
                                      **({"grader_errors": {g: len(evaluation.results[name].grader_errors[g]) for g in evaluation.graders}}
                                         if evaluation.graders else {})} for name in systems}
    data["summary"] = {"main_metric": metric, "examples": len(cases), "few_shot": evaluation.shots,
                       "retrieved": evaluation.retrieved, "systems": systems, "confidence": 0.95,
                       "comparisons": {f"tuned vs {name}": {m: d.to_dict() for m, d in found.items()} for name, found in differences.items()},
                       "verdict": words, "preference": evaluation.preference, "graders": list(evaluation.graders)}
    (run_dir / "eval.json").write_text(json.dumps(data, indent=2), encoding="utf-8")

    md = [f"# Evaluation on {len(cases)} example(s)", "", "Each metric with its 95% confidence interval (bootstrap over cases).", "",
          "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    md += ["", *words, ""]
    if "base_few_shot" in results:
        md += [f"Few-shot prompting used {evaluation.shots} training example(s) as real turns before each question.", ""]
    if "base_retrieval" in results:
        md += [f"Retrieval put the {evaluation.retrieved} training example(s) most similar to each question (never the question itself) before it.", ""]
    if differences:
        md += ["## Tuned against each baseline (paired 95% intervals)", "", "| comparison | metric | difference | 95% CI | verdict |", "|---|---|---|---|---|"]
        for name, found in differences.items():
            for m, d in found.items():
                said = {"tuned": "tuned better", "other": "baseline better"}.get(d.better, f"not measurable (about {d.cases_needed} cases needed)" if d.cases_needed else "no difference")
                md.append(f"| tuned vs {name} | {m} | {d.value:+.3f} | {d.low:+.3f} to {d.high:+.3f} | {said} |")
        md.append("")
    md += ["## Examples", ""]
    for i, case in enumerate(cases[:5]):
        question = case.messages[-1]["content"] if case.messages else ""
        md += [f"### {i + 1}. {case.file}:{case.line}", "", f"**Question:** {question}", ""]
        md += ["**Reference:**", "", code_block(case.reference), ""] if case.reference is not None else []
        for name in systems:
            md += [f"**{name}:**", "", code_block(answers[name][i]), ""]
    (run_dir / "eval.md").write_text("\n".join(md), encoding="utf-8")
    _bar_chart(run_dir / "eval.png", results, metric, intervals)

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    shown = "tuned" if "tuned" in results else systems[0]
    examples = ["", f"Examples (reference, then {shown}'s answer):"]
    for i, case in enumerate(cases[:3]):
        examples += [f"  {case.file}:{case.line}"] + ([f"    reference:  {case.reference}"] if case.reference is not None else [])
        examples += [f"    {shown}: {answers[shown][i]}"]
    return "\n".join(text + ["", "Metric cells: value [95% confidence interval, bootstrap over cases]", ""] + words + examples)


def grader_failures(failures: Mapping[str, Mapping[str, list[str]]], cases: int) -> list[str]:
    """A sentence per grader that could not score some answers of a system (each counted as 0), with the first reason."""
    return [f"The grader {grader!r} could not score {len(errors)} of {cases} answers of {system} (each counted as 0 in its mean); "
            f"the first: {errors[0]}" for system, found in failures.items() for grader, errors in found.items()]


_BARS = {"base_zero_shot": ("untuned\nzero-shot", "#9e9e9e"), "base_few_shot": ("untuned\nfew-shot", "#ff9f40"),
         "base_retrieval": ("untuned\nretrieval", "#1f77b4"), "start": ("starting\nadapter", "#9467bd"), "tuned": ("fine-tuned", "#2ca02c")}


def _bar_chart(path: Path, results: Scores, metric: str, intervals: Bounds | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [n for n in SYSTEMS if n in results]
    values = [results[name][metric] for name in systems]
    found = [ci for ci in ((intervals or {}).get(name, {}).get(metric) for name in systems) if ci]
    errors = None
    if len(found) == len(systems):  # asymmetric error bars: the 95% interval around each value
        errors = [[max(v - ci[0], 0) for v, ci in zip(values, found)], [max(ci[1] - v, 0) for v, ci in zip(values, found)]]
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    bars = ax.bar([_BARS[n][0] for n in systems], values, color=[_BARS[n][1] for n in systems], yerr=errors, capsize=4)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    ax.set_title(f"{metric} on the evaluation set" + (" (bars: 95% CI)" if errors else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
