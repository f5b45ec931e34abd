"""`trainer eval`: three systems on the same cases, measured the same way.

1. base_zero_shot: the untuned model, the conversation as it is;
2. base_few_shot: the untuned model with k training examples in the prompt (the prompt-engineering baseline);
3. tuned: the fine-tuned model, the conversation as it is.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from trainer.config import Config
from trainer.data.pipeline import load_examples, split_validation
from trainer.evaluation.metrics import METRICS
from trainer.evaluation.prompts import Case, few_shot_messages, pick_shots, to_case
from trainer.errors import UserError

SYSTEMS = ("base_zero_shot", "base_few_shot", "tuned")


def eval_cases(config: Config) -> tuple[list[Case], list]:
    """The cases (test set, validation set, or the held-out share of the training data) and the few-shot pool."""
    train, _ = load_examples(config.data.train, config)
    source = config.evaluation.test or config.data.validation
    if source:
        examples, _ = load_examples(source, config)
    else:
        train, examples = split_validation(train, config.data.validation_split, config.training.seed)
    cases = [c for c in (to_case(e) for e in examples if e.messages) if c is not None]
    if config.evaluation.max_examples:
        cases = cases[: config.evaluation.max_examples]
    if not cases:
        raise UserError("evaluation: there are no chat examples ending in an assistant answer to evaluate on; set evaluation.test.")
    return cases, train


def answer_loss(loaded, conversations: list[list[dict]], references: list[str], cases: list[Case] | None = None) -> float:
    """Mean loss per token of the reference answers (with their end-of-turn token), given each prompt."""
    import torch

    from trainer.data.formats import Example, Message
    from trainer.data.templates import resolve_template
    from trainer.data.tokenize import Tokenizer
    from trainer.loop import LossOnTrainedTokens
    from trainer.data.batching import collate_padded

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
        if tokenized is not None:
            items.append(tokenized)
    loss_module = LossOnTrainedTokens(loaded.model).eval()
    total = count = 0.0
    with torch.no_grad():
        for begin in range(0, len(items), 8):
            batch = {k: v.to(loaded.device) for k, v in collate_padded(items[begin : begin + 8], loaded.tokenizer.pad_token_id).items()}
            loss_sum, n = loss_module(**batch)
            total, count = total + float(loss_sum), count + float(n)
    return total / count if count else float("nan")


def run_system(loaded, conversations: list[list[dict]], cases: list[Case], metrics: tuple[str, ...], max_new_tokens: int) -> dict:
    from trainer.generate import generate

    started = time.perf_counter()
    answers = generate(loaded, conversations, max_new_tokens=max_new_tokens, tools=[c.tools for c in cases])
    seconds = time.perf_counter() - started
    predictions = [a.text for a in answers]
    references = [c.reference for c in cases]
    result: dict = {}
    for name in metrics:
        if name == "loss":
            loss = answer_loss(loaded, conversations, references, cases)
            result.update({"loss": loss, "perplexity": math.exp(min(loss, 50))})
        else:
            result.update(METRICS[name](predictions, references))
    result.update(
        prompt_tokens_mean=sum(a.prompt_tokens for a in answers) / len(answers),
        generated_tokens_mean=sum(a.generated_tokens for a in answers) / len(answers),
        seconds_per_example=seconds / len(answers),
        answers=predictions,
    )
    return result


def evaluate_run(config: Config, run_dir: Path, say=print) -> dict:
    """All three systems; the base model is the tuned one with its adapter switched off when it has one."""
    import contextlib

    import torch

    from trainer.generate import load_base, load_run

    torch.manual_seed(config.training.seed)
    cases, pool = eval_cases(config)
    e = config.evaluation
    shots = pick_shots(pool, e.few_shot, config.training.seed)
    tuned = load_run(run_dir)
    has_adapter = hasattr(tuned.model, "disable_adapter")
    base = tuned if has_adapter else load_base(config)
    zero = [list(c.messages) for c in cases]
    few = [few_shot_messages(c, shots) for c in cases]
    results = {}
    for name, loaded, conversations in (("base_zero_shot", base, zero), ("base_few_shot", base, few), ("tuned", tuned, zero)):
        say(f"evaluating {name} on {len(cases)} example(s) ...")
        off = tuned.model.disable_adapter() if has_adapter and name != "tuned" else contextlib.nullcontext()
        with off:
            results[name] = run_system(loaded, conversations, cases, e.metrics, e.max_new_tokens)
    return {"cases": cases, "shots": len(shots), "results": results}
