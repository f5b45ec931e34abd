"""The evaluation report: a terminal table, eval.json, eval.md (with the token saving and examples) and eval.png."""
from __future__ import annotations

import json
from pathlib import Path

from trainer.evaluation.runner import SYSTEMS

LOWER_IS_BETTER = {"loss", "perplexity"}
SHOWN = ("loss", "perplexity", "exact_match", "token_f1", "rouge_l", "json_list_f1", "json_parsed", "tool_call_match", "tool_call_wellformed")
COSTS = ("prompt_tokens_mean", "generated_tokens_mean", "seconds_per_example")


def main_metric(metrics: tuple[str, ...]) -> str:
    answer_metrics = [m for m in metrics if m != "loss"]
    return answer_metrics[-1] if answer_metrics else "loss"


def verdict(results: dict, metric: str) -> list[str]:
    """Plain sentences: did the tuned model beat each baseline on the main metric, and by how much."""
    tuned = results["tuned"][metric]
    lines = []
    for name, label in (("base_zero_shot", "the untuned model (zero-shot)"), ("base_few_shot", "few-shot prompting")):
        other = results[name][metric]
        better = tuned < other if metric in LOWER_IS_BETTER else tuned > other
        diff = abs(tuned - other)
        if better:
            lines.append(f"The fine-tuned model beat {label} on {metric}: {tuned:.3f} against {other:.3f} ({diff:+.3f} better).")
        elif tuned == other:
            lines.append(f"The fine-tuned model tied with {label} on {metric}: both {tuned:.3f}.")
        else:
            lines.append(f"The fine-tuned model did NOT beat {label} on {metric}: {tuned:.3f} against {other:.3f} ({diff:.3f} worse).")
    few, mine = results["base_few_shot"]["prompt_tokens_mean"], results["tuned"]["prompt_tokens_mean"]
    if few > 0:
        lines.append(f"It needs {mine:.0f} prompt tokens per request instead of few-shot prompting's {few:.0f}: {1 - mine / few:.0%} fewer.")
    return lines


def table(results: dict, metrics: list[str]) -> list[list[str]]:
    rows = [["system"] + metrics + ["prompt tokens", "generated tokens", "s/example"]]
    for name in SYSTEMS:
        r = results[name]
        rows.append([name] + [f"{r[m]:.3f}" if m in r else "-" for m in metrics] + [f"{r[c]:.1f}" if c != "seconds_per_example" else f"{r[c]:.2f}" for c in COSTS])
    return rows


def write_report(run_dir: Path, evaluation: dict, config) -> str:
    results, cases = evaluation["results"], evaluation["cases"]
    present = [m for m in SHOWN if m in results["tuned"]]
    metric = main_metric(config.evaluation.metrics)
    rows = table(results, present)
    words = verdict(results, metric)

    data = {name: {k: v for k, v in results[name].items() if k != "answers"} for name in SYSTEMS}
    data["summary"] = {"main_metric": metric, "examples": len(cases), "few_shot": evaluation["shots"], "verdict": words}
    (run_dir / "eval.json").write_text(json.dumps(data, indent=2), encoding="utf-8")

    md = [f"# Evaluation on {len(cases)} example(s)", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    md += ["", *words, "", f"Few-shot prompting used {evaluation['shots']} training example(s) as real turns before each question.", "",
           "## Examples", ""]
    for i, case in enumerate(cases[:5]):
        question = case.messages[-1]["content"] if case.messages else ""
        md += [f"### {i + 1}. {case.file}:{case.line}", "", f"**Question:** {question}", "", f"**Reference:** `{case.reference}`", ""]
        md += [f"- **{name}:** `{results[name]['answers'][i]}`" for name in SYSTEMS] + [""]
    (run_dir / "eval.md").write_text("\n".join(md), encoding="utf-8")
    _bar_chart(run_dir / "eval.png", results, metric)

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    examples = ["", "Examples (reference, then the fine-tuned model's answer):"]
    for i, case in enumerate(cases[:3]):
        examples += [f"  {case.file}:{case.line}", f"    reference:  {case.reference}", f"    fine-tuned: {results['tuned']['answers'][i]}"]
    return "\n".join(text + [""] + words + examples)


def _bar_chart(path: Path, results: dict, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [results[name][metric] for name in SYSTEMS]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bars = ax.bar(["untuned\nzero-shot", "untuned\nfew-shot", "fine-tuned"], values, color=["#9e9e9e", "#ff9f40", "#2ca02c"])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    ax.set_title(f"{metric} on the evaluation set")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
