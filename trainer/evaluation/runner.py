"""`trainer eval`: up to four systems on the same cases, measured the same way (evaluation.systems picks them).

1. base_zero_shot: the untuned model, the conversation as it is;
2. base_few_shot: the untuned model with k fixed training examples in the prompt (the prompt-engineering baseline);
3. base_retrieval: the untuned model with the k training examples most similar to each case (the RAG baseline);
4. start: with model.adapter, the adapter the run started from (e.g. the SFT result a dpo run improves on);
5. tuned: the fine-tuned model, the conversation as it is.

For preference data (dpo, orpo) the cases are the pairs' prompts with the chosen answer as the reference, and
the tuned model's reward accuracy and margin on the validation pairs are measured too (preference_scores).

Every metric is kept per case too, for the bootstrap intervals (intervals.py).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from trainer.config import Config
from trainer.data.pipeline import load_examples, split_validation
from trainer.data.preference import Pair
from trainer.errors import UserError
from trainer.evaluation.intervals import PerCase, confidence
from trainer.evaluation.metrics import METRICS
from trainer.evaluation.prompts import Case, few_shot_messages, pick_shots, to_case

SYSTEMS = ("base_zero_shot", "base_few_shot", "base_retrieval", "start", "tuned")
LOWER_IS_BETTER = {"loss", "perplexity"}


def eval_cases(config: Config) -> tuple[list[Case], list]:
    """The cases (test set, validation set, or the held-out share of the training data) and the few-shot pool."""
    train, _ = load_examples(config.data.train, config)
    if config.evaluation.test:  # conversations ending with the reference answer, whatever the objective
        chats = config.replace(training=config.training.replace(objective="sft"), data=config.data.replace(format="auto"))
        examples, _ = load_examples(config.evaluation.test, chats)
    elif config.data.validation:
        examples, _ = load_examples(config.data.validation, config)
    else:
        train, examples = split_validation(train, config.data.validation_split, config.training.seed)
    # preference pairs: their prompts, with the chosen answer as the reference (and as the few-shot examples)
    train, examples = [_chat_of(e) for e in train], [_chat_of(e) for e in examples]
    cases = [c for c in (to_case(e) for e in examples if e.messages) if c is not None]
    if config.evaluation.max_examples:
        cases = cases[: config.evaluation.max_examples]
    if not cases:
        raise UserError("evaluation: there are no chat examples ending in an assistant answer to evaluate on; set evaluation.test.")
    return cases, train


def _chat_of(example):
    return example.chosen if isinstance(example, Pair) else example


def answer_loss(loaded, conversations: list[list[dict]], references: list[str], cases: list[Case] | None = None) -> PerCase:
    """Per case, the summed loss over the reference answer's tokens (with its end-of-turn token) given the prompt,
    and how many tokens that was: their ratio over all cases is the mean loss per token."""
    import torch

    from trainer.data.batching import collate_padded
    from trainer.data.formats import Example, Message
    from trainer.data.templates import resolve_template
    from trainer.data.tokenize import IGNORE, Tokenizer
    from trainer.loop import LossOnTrainedTokens

    cfg = loaded.config
    encode = Tokenizer(loaded.tokenizer, resolve_template(cfg.data.chat_template, loaded.tokenizer), "assistant", 10**9)
    items = []
    for k, (messages, reference) in enumerate(zip(conversations, references)):
        case = cases[k] if cases else None
        if case is not None and case.turns and len(messages) == len(case.messages):  # the case's own turns, tool calls included
            from dataclasses import replace

            turns = [replace(m, trained=False) for m in case.turns[:-1]] + [replace(case.turns[-1], trained=True)]
        else:
            turns = [Message(m["role"], m["content"] or "", False) for m in messages if m["role"] != "tool"] + [Message("assistant", reference, True)]
        tokenized, problem = encode(Example(tuple(turns), None, "", 0, case.tools if case else None))
        items.append(tokenized)  # None (nothing to score) counts as 0 tokens
    loss_module = LossOnTrainedTokens(loaded.model).eval()
    sums, counts = [0.0] * len(items), [0.0] * len(items)
    scored = [i for i, item in enumerate(items) if item is not None]
    with torch.no_grad():
        for begin in range(0, len(scored), 8):
            rows = scored[begin : begin + 8]
            batch = {k: v.to(loaded.device) for k, v in collate_padded([items[i] for i in rows], loaded.tokenizer.pad_token_id).items()}
            # the loss module's own steps, with the sum kept per row
            hidden = loss_module.decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                         use_cache=False).last_hidden_state
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE
            per_token = torch.nn.functional.cross_entropy(loss_module.head(hidden[:, :-1][keep]).float(), targets[keep], reduction="none")
            row_of = keep.nonzero()[:, 0]
            row_sums = torch.zeros(len(rows)).index_add_(0, row_of.cpu(), per_token.cpu())
            row_counts = keep.sum(dim=1).cpu()
            for j, i in enumerate(rows):
                sums[i], counts[i] = float(row_sums[j]), float(row_counts[j])
    return PerCase(tuple(sums), tuple(counts))


def run_system(loaded, conversations: list[list[dict]], cases: list[Case], metrics: tuple[str, ...], max_new_tokens: int) -> dict:
    from trainer.generate import generate

    started = time.perf_counter()
    answers = generate(loaded, conversations, max_new_tokens=max_new_tokens, tools=[c.tools for c in cases])
    seconds = time.perf_counter() - started
    predictions = [a.text for a in answers]
    references = [c.reference for c in cases]
    result: dict = {}
    per_case: dict[str, PerCase] = {}
    for name in metrics:
        if name == "loss":
            per_case["loss"] = answer_loss(loaded, conversations, references, cases)
            loss = per_case["loss"].value
            result.update({"loss": loss, "perplexity": math.exp(min(loss, 50))})
        else:
            result.update(METRICS[name](predictions, references))
            per_case.update(per_case_scores(name, predictions, references))
    result.update(
        per_case=per_case,
        prompt_tokens_mean=sum(a.prompt_tokens for a in answers) / len(answers),
        generated_tokens_mean=sum(a.generated_tokens for a in answers) / len(answers),
        seconds_per_example=seconds / len(answers),
        answers=predictions,
    )
    return result


def per_case_scores(name: str, predictions: list[str], references: list[str]) -> dict[str, PerCase]:
    """Each answer metric case by case (the metric of one prediction), so that their mean is the reported value."""
    scores: dict[str, list[float]] = {}
    for p, r in zip(predictions, references):
        for key, value in METRICS[name]([p], [r]).items():
            scores.setdefault(key, []).append(value)
    return {key: PerCase.of_means(values) for key, values in scores.items()}


def evaluate_run(config: Config, run_dir: Path, say=print) -> dict:
    """The systems evaluation.systems names; the base model is the tuned one with its adapter switched off when it has one."""
    import contextlib

    import torch

    from trainer.evaluation.retrieval import Retriever
    from trainer.generate import load_base, load_run

    torch.manual_seed(config.training.seed)
    cases, pool = eval_cases(config)
    e = config.evaluation
    systems = [name for name in SYSTEMS if name in e.systems or (name == "start" and config.model.adapter and "tuned" in e.systems)]
    shots = pick_shots(pool, e.few_shot, config.training.seed)
    tuned = load_run(run_dir) if "tuned" in systems else None
    start = load_start(config) if "start" in systems else None
    has_adapter = tuned is not None and hasattr(tuned.model, "disable_adapter")
    base = tuned if has_adapter else load_base(config) if any(name != "tuned" for name in systems) else None
    retriever = Retriever(pool, e.retrieval.k, e.retrieval.embedding_model)
    conversations = {
        "base_zero_shot": lambda: [list(c.messages) for c in cases],
        "base_few_shot": lambda: [few_shot_messages(c, shots) for c in cases],
        "base_retrieval": lambda: [few_shot_messages(c, found) for c, found in zip(cases, retriever.shots(cases))],
        "start": lambda: [list(c.messages) for c in cases],
        "tuned": lambda: [list(c.messages) for c in cases],
    }
    loaded = {"tuned": tuned, "start": start}
    results = {}
    for name in systems:
        say(f"evaluating {name} on {len(cases)} example(s) ...")
        off = tuned.model.disable_adapter() if has_adapter and name not in loaded else contextlib.nullcontext()
        with off:
            results[name] = run_system(loaded.get(name) or base, conversations[name](), cases, e.metrics, e.max_new_tokens)
    per_case = {name: results[name].pop("per_case") for name in systems}
    sure = confidence(per_case, config.training.seed, LOWER_IS_BETTER)
    found = {"cases": cases, "shots": len(shots), "retrieved": retriever.k, "systems": systems, "results": results, **sure}
    if tuned is not None and config.training.objective != "sft":
        say("measuring the preference of the tuned model on the validation pairs ...")
        found["preference"] = preference_scores(tuned, config, run_dir)
    return found


def load_start(config: Config):
    """The model the run started from: config.model.adapter on the base model."""
    from peft import PeftModel

    from trainer.generate import load_base
    from trainer.models import adapter_folder

    folder = adapter_folder(config.model.adapter)
    start = load_base(config, tokenizer_from=str(folder))
    start.model = PeftModel.from_pretrained(start.model, str(folder)).eval()
    return start


def preference_scores(tuned, config: Config, run_dir: Path) -> dict:
    """Reward accuracy (share of pairs whose chosen answer gains more than the rejected one) and mean reward margin of the
    tuned model on the validation pairs, with 95% bootstrap intervals; dpo's rewards are against the run's reference
    log-probs (the model it started from), orpo's are its per-token log-probs times lambda."""
    import torch

    from trainer.data.pipeline import prepare_data
    from trainer.evaluation.intervals import PerCase, interval, resample_indices
    from trainer.objectives import REFERENCE_FILE, PairBatching, PreferenceLoss

    data = prepare_data(config, tuned.tokenizer)
    pairs = data.validation
    reference = torch.load(run_dir / REFERENCE_FILE) if config.training.objective == "dpo" else None
    batching = PairBatching(8, config.training.seed, tuned.tokenizer.pad_token_id, reference, "validation")
    loss = PreferenceLoss(tuned.model, config).eval()
    margins, right = [], []
    with torch.no_grad():
        for batch in batching.plan(pairs, 0):
            tensors = {k: v.to(tuned.device) for k, v in batching.collate(batch).items()}
            loss(**tensors)
            assert loss.last_rewards is not None
            chosen, rejected = loss.last_rewards
            margins += (chosen - rejected).tolist()
            right += (chosen > rejected).float().tolist()
    if not margins:
        return {}
    draws = resample_indices(len(margins), config.training.seed)
    accuracy, margin = interval(PerCase.of_means(right), draws), interval(PerCase.of_means(margins), draws)
    return {"pairs": len(margins), "reward_accuracy": accuracy.value, "reward_accuracy_ci95": accuracy.to_list(),
            "reward_margin": margin.value, "reward_margin_ci95": margin.to_list()}
