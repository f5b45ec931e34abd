"""`trainer eval`: up to five systems on the same cases, measured the same way (evaluation.systems picks them).

1. base_zero_shot: the untuned model, the conversation as it is;
2. base_few_shot: the untuned model with k fixed training examples in the prompt (the prompt-engineering baseline);
3. base_retrieval: the untuned model with the k training examples most similar to each case (the RAG baseline);
4. start: with model.adapter, the adapter the run started from (e.g. the SFT result a dpo run improves on);
5. tuned: the fine-tuned model, the conversation as it is.

For preference data (dpo, orpo) the cases are the pairs' prompts with the chosen answer as the reference, and
the tuned model's reward accuracy and margin on the validation pairs are measured too (preference_scores).

For a grpo run the cases are prompts it did not train on (cases.prompt_cases), answered by the tuned model, the
untuned one and the adapter it started from: there are no worked examples for few-shot prompting or retrieval, and no
reference answer for evaluation.metrics, so its graders measure (evaluation.graders, else its training graders).

Graders are metrics by their names: each answer graded against its case's item (cases.with_items), a grader's failures
counted per system (each scores 0, as in training) and reported, not hidden in the mean.

Every metric is kept per case too, for the bootstrap intervals (intervals.py).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from trainer.config import Config
from trainer.data.formats import Example
from trainer.errors import Problem, UserError
from trainer.evaluation.cases import eval_cases, prompt_cases, with_items
from trainer.evaluation.intervals import Difference, Interval, PerCase, confidence
from trainer.evaluation.metrics import METRICS, RESERVED
from trainer.evaluation.prompts import Case, few_shot_messages, pick_shots
from trainer.generate import ChatMessage, Loaded
from trainer.objectives import objective_for

if TYPE_CHECKING:
    from trainer.reinforcement.rewards import Reward

__all__ = ["eval_cases", "evaluate_run"]  # eval_cases: where callers have always found it

SYSTEMS = ("base_zero_shot", "base_few_shot", "base_retrieval", "start", "tuned")
LOWER_IS_BETTER = {"loss", "perplexity"}


class PreferenceScores(TypedDict):
    """The tuned model on the validation pairs, as eval.json writes it (summary.preference)."""

    pairs: int
    reward_accuracy: float  # share of pairs whose chosen answer gains more than the rejected one
    reward_accuracy_ci95: list[float]
    reward_margin: float  # mean of (chosen reward - rejected reward)
    reward_margin_ci95: list[float]


@dataclass(frozen=True)
class SystemResult:
    """What one system did on the cases."""

    scores: dict[str, float]  # each metric, then prompt_tokens_mean, generated_tokens_mean, seconds_per_example
    answers: list[str]  # case by case
    per_case: dict[str, PerCase]  # each metric's per-case parts, for the intervals
    grader_errors: dict[str, list[str]] = field(default_factory=dict)  # per grader, why it could not score an answer (one per answer)


@dataclass(frozen=True)
class Evaluation:
    """The outcome of `trainer eval`, which report.py writes down."""

    cases: list[Case]
    shots: int  # few-shot examples in each prompt
    retrieved: int  # retrieved examples in each prompt
    systems: list[str]  # in the order of SYSTEMS
    results: dict[str, SystemResult]
    intervals: dict[str, dict[str, Interval]]  # {system: {metric: 95% interval}}
    differences: dict[str, dict[str, Difference]]  # {other system: {metric: tuned minus other}}
    preference: PreferenceScores | None = None  # preference objectives (dpo, orpo), with validation pairs
    metrics: tuple[str, ...] = ()  # the evaluation.metrics measured (none on grpo's prompts: they have no reference)
    graders: tuple[str, ...] = ()  # the graders measured, by name (their metrics)


def answer_loss(loaded: Loaded, conversations: Sequence[Sequence[ChatMessage]], references: list[str], cases: list[Case] | None = None) -> PerCase:
    """Per case, the summed loss over the reference answer's tokens (with its end-of-turn token) given the prompt,
    and how many tokens that was: their ratio over all cases is the mean loss per token."""
    import torch

    from trainer.data.batching import collate_padded
    from trainer.data.formats import Message
    from trainer.data.templates import template_of
    from trainer.data.tokenize import IGNORE, Tokenizer
    from trainer.objectives.sft import LossOnTrainedTokens

    cfg = loaded.config
    encode = Tokenizer(loaded.tokenizer, template_of(cfg.data, loaded.tokenizer), "assistant", 10**9)
    items = []
    for k, (messages, reference) in enumerate(zip(conversations, references)):
        case = cases[k] if cases else None
        if case is not None and case.turns and len(messages) == len(case.messages):  # the case's own turns, tool calls included
            from dataclasses import replace

            turns = [replace(m, trained=False) for m in case.turns[:-1]] + [replace(case.turns[-1], trained=True)]
        else:
            turns = [Message(m["role"], m["content"] or "", False) for m in messages if m["role"] != "tool"] + [Message("assistant", reference, True)]
        tokenized, _ = encode(Example(tuple(turns), None, "", 0, case.tools if case else None))
        items.append(tokenized)  # None (nothing to score) counts as 0 tokens
    loss_module = LossOnTrainedTokens(loaded.model).eval()
    sums, counts = [0.0] * len(items), [0.0] * len(items)
    scored = [(i, item) for i, item in enumerate(items) if item is not None]
    with torch.no_grad():
        for begin in range(0, len(scored), 8):
            rows = scored[begin : begin + 8]
            batch = {k: v.to(loaded.device) for k, v in collate_padded([item for _, item in rows], loaded.tokenizer.pad_token_id).items()}
            # the loss module's own steps, with the sum kept per row
            hidden = loss_module.decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                         use_cache=False).last_hidden_state
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE
            per_token = torch.nn.functional.cross_entropy(loss_module.head(hidden[:, :-1][keep]).float(), targets[keep], reduction="none")
            row_of = keep.nonzero()[:, 0]
            row_sums = torch.zeros(len(rows)).index_add_(0, row_of.cpu(), per_token.cpu())
            row_counts = keep.sum(dim=1).cpu()
            for j, (i, _) in enumerate(rows):
                sums[i], counts[i] = float(row_sums[j]), float(row_counts[j])
    return PerCase(tuple(sums), tuple(counts))


def run_system(loaded: Loaded, conversations: Sequence[Sequence[ChatMessage]], cases: list[Case], metrics: tuple[str, ...],
               max_new_tokens: int, graders: Sequence[Reward] = ()) -> SystemResult:
    from trainer.generate import generate

    started = time.perf_counter()
    answers = generate(loaded, conversations, max_new_tokens=max_new_tokens, tools=[c.tools for c in cases])
    seconds = time.perf_counter() - started
    predictions = [a.text for a in answers]
    references = [c.reference or "" for c in cases]  # a grpo prompt has none: prompt_cases' callers measure no metric then
    scores: dict[str, float] = {}
    per_case: dict[str, PerCase] = {}
    errors: dict[str, list[str]] = {}
    if graders:
        scores, per_case, errors = grader_scores(graders, predictions, cases)
    for name in metrics:
        if name == "loss":
            per_case["loss"] = answer_loss(loaded, conversations, references, cases)
            loss = per_case["loss"].value
            scores.update({"loss": loss, "perplexity": math.exp(min(loss, 50))})
        else:
            scores.update(METRICS[name](predictions, references))
            per_case.update(per_case_scores(name, predictions, references))
    scores.update(
        prompt_tokens_mean=sum(a.prompt_tokens for a in answers) / len(answers),
        generated_tokens_mean=sum(a.generated_tokens for a in answers) / len(answers),
        seconds_per_example=seconds / len(answers),
    )
    return SystemResult(scores, predictions, per_case, errors)


def grader_scores(graders: Sequence[Reward], predictions: list[str], cases: list[Case]) -> tuple[dict[str, float], dict[str, PerCase], dict[str, list[str]]]:
    """Each grader's mean score, its per-case scores and its failures, the answers graded in parallel (a score_model
    grader waits on a server, a python grader on a process of its own) as a grpo step grades them."""
    from concurrent.futures import ThreadPoolExecutor

    from trainer.reinforcement.rewards import GRADING_THREADS, score_answers

    with ThreadPoolExecutor(GRADING_THREADS) as pool:
        graded = score_answers(graders, predictions, [c.item or {} for c in cases], pool)
    scores, per_case, errors = {}, {}, {}
    for k, reward in enumerate(graders):
        per_case[reward.name] = PerCase.of_means([row[k].score for row in graded.grades])
        scores[reward.name] = per_case[reward.name].value
        errors[reward.name] = [e for row in graded.grades if (e := row[k].error) is not None]
    return scores, per_case, errors


def evaluation_graders(config: Config) -> list[Reward]:
    """evaluation.graders, or a grpo run's training graders (its reward) when that is empty; named apart from the metrics."""
    from trainer.reinforcement.rewards import load_rewards

    entries = config.evaluation.graders or (config.training.grpo.graders if objective_for(config).samples else ())
    if not entries:
        return []
    graders = load_rewards(entries)
    taken = [r.name for r in graders if r.name in RESERVED]
    if taken:  # evaluation.graders' names are checked with the config; grpo's are free until they meet the metrics here
        raise UserError(f"the grader(s) {', '.join(map(repr, taken))} of training.grpo.graders are named like trainer eval's own numbers, "
                        "which they would overwrite in the report; rename them, or set evaluation.graders.")
    return graders


def per_case_scores(name: str, predictions: list[str], references: list[str]) -> dict[str, PerCase]:
    """Each answer metric case by case (the metric of one prediction), so that their mean is the reported value."""
    scores: dict[str, list[float]] = {}
    for p, r in zip(predictions, references):
        for key, value in METRICS[name]([p], [r]).items():
            scores.setdefault(key, []).append(value)
    return {key: PerCase.of_means(values) for key, values in scores.items()}


def evaluate_run(config: Config, run_dir: Path, say: Callable[[str], None] = print) -> Evaluation:
    """The systems evaluation.systems names; the base model is the tuned one with its adapter switched off when it has one."""
    import contextlib

    import torch

    from trainer.evaluation.retrieval import Retriever
    from trainer.generate import load_base, load_run

    torch.manual_seed(config.training.seed)
    e = config.evaluation
    graders = evaluation_graders(config)
    systems = [name for name in SYSTEMS if name in e.systems or (name == "start" and config.model.adapter and "tuned" in e.systems)]
    metrics = e.metrics
    pool: Sequence[Example]
    if objective_for(config).samples:  # grpo: prompts, no worked examples to show
        cases, pool, index_dir = prompt_cases(config), [], None
        if dropped := [name for name in systems if name in ("base_few_shot", "base_retrieval")]:
            say(f"{' and '.join(dropped)} left out: grpo's prompts have no answers to show as examples.")
            systems = [name for name in systems if name not in dropped]
        if cases[0].reference is None:
            metrics = ()
            say("grpo's prompts have no reference answer: evaluation.metrics are left out, the graders measure"
                + (f" ({', '.join(g.name for g in graders)})." if graders else "; and there are none: set evaluation.graders."))
            if not graders:
                raise UserError("evaluation: grpo's prompts have no reference answer for evaluation.metrics, and no grader scores them; "
                                "set evaluation.graders (or training.grpo.graders).")
    else:
        cases, found = eval_cases(config)
        pool, index_dir = found, found.index_dir
    if graders and cases[0].item is None:
        cases = with_items(cases, config)
    missing = missing_fields(graders, cases)
    if missing:
        raise UserError(missing, title="evaluation: the graders read fields the cases do not have (a chat case's item is its record "
                                       "plus `reference`, its final answer; docs/graders.md):")
    shots = pick_shots(pool, e.few_shot, config.training.seed)
    tuned = load_run(run_dir) if "tuned" in systems else None
    start = load_start(config) if "start" in systems else None
    adapter = tuned.model if tuned is not None and hasattr(tuned.model, "disable_adapter") else None
    base = tuned if adapter is not None else load_base(config) if any(name != "tuned" for name in systems) else None
    retriever = Retriever(pool, e.retrieval.k, e.retrieval.embedding_model, index_dir)
    conversations = {
        "base_zero_shot": lambda: [list(c.messages) for c in cases],
        "base_few_shot": lambda: [few_shot_messages(c, shots) for c in cases],
        "base_retrieval": lambda: [few_shot_messages(c, found) for c, found in zip(cases, retriever.shots(cases))],
        "start": lambda: [list(c.messages) for c in cases],
        "tuned": lambda: [list(c.messages) for c in cases],
    }
    own = {"tuned": tuned, "start": start}  # the systems with a model of their own; the others are the base model
    results = {}
    for name in systems:
        say(f"evaluating {name} on {len(cases)} example(s) ...")
        loaded = own.get(name) or base
        assert loaded is not None  # loaded above for every system asked for
        off = adapter.disable_adapter() if adapter is not None and name not in own else contextlib.nullcontext()
        with off:
            results[name] = run_system(loaded, conversations[name](), cases, metrics, e.max_new_tokens, graders)
    sure = confidence({name: results[name].per_case for name in systems}, config.training.seed, LOWER_IS_BETTER)
    preference = None
    if tuned is not None and objective_for(config).pairs:
        say("measuring the preference of the tuned model on the validation pairs ...")
        preference = preference_scores(tuned, config, run_dir)
    return Evaluation(cases, len(shots), retriever.k, systems, results, sure["intervals"], sure["differences"], preference,
                      metrics, tuple(g.name for g in graders))


def missing_fields(graders: Sequence[Reward], cases: list[Case]) -> list[Problem]:
    """A problem for each grader field the first cases' items lack: one missing field would score every answer 0."""
    from trainer.data.prompts import Prompt
    from trainer.data.prompts import missing_fields as prompt_fields

    return prompt_fields([Prompt((), c.item or {}, c.file, c.line) for c in cases], graders)


def load_start(config: Config) -> Loaded:
    """The model the run started from: config.model.adapter on the base model."""
    from peft import PeftModel

    from trainer.generate import load_base
    from trainer.models import adapter_folder

    assert config.model.adapter is not None
    folder = adapter_folder(config.model.adapter)
    start = load_base(config, tokenizer_from=str(folder))
    start.model = PeftModel.from_pretrained(start.model, str(folder)).eval()
    return start


def preference_scores(tuned: Loaded, config: Config, run_dir: Path) -> PreferenceScores | None:
    """Reward accuracy (share of pairs whose chosen answer gains more than the rejected one) and mean reward margin of the
    tuned model on the validation pairs, with 95% bootstrap intervals; dpo's rewards are against the run's reference
    log-probs (the model it started from), orpo's are its per-token log-probs times lambda. None without any pairs."""
    import torch

    from trainer.data.batching import PairBatching
    from trainer.data.pipeline import prepare_data
    from trainer.evaluation.intervals import interval, resample_indices
    from trainer.objectives.preference import REFERENCE_FILE, PreferenceLoss

    data = prepare_data(config, tuned.tokenizer)
    pairs = data.validation
    reference = torch.load(run_dir / REFERENCE_FILE) if objective_for(config).needs_reference else None
    batching = PairBatching(8, config.training.seed, tuned.tokenizer.pad_token_id, reference, "validation")
    loss = PreferenceLoss(tuned.model, config).eval()
    margins: list[float] = []
    right: list[float] = []
    with torch.no_grad():
        for batch in batching.plan(pairs, 0):
            tensors = {k: v.to(tuned.device) for k, v in batching.collate(batch).items()}
            loss(**tensors)
            assert loss.last_rewards is not None
            chosen, rejected = loss.last_rewards
            margins += (chosen - rejected).tolist()
            right += (chosen > rejected).float().tolist()
    if not margins:
        return None
    draws = resample_indices(len(margins), config.training.seed)
    accuracy, margin = interval(PerCase.of_means(right), draws), interval(PerCase.of_means(margins), draws)
    return {"pairs": len(margins), "reward_accuracy": accuracy.value, "reward_accuracy_ci95": accuracy.to_list(),
            "reward_margin": margin.value, "reward_margin_ci95": margin.to_list()}
