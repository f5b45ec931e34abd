"""grpo's loop, top to bottom: draw prompts, sample answers, grade them, advantages, old and reference log-probs, then
num_iterations optimizer steps over those answers (accumulation, clipping), logging and checkpoints as the sft loop.

A round is one window of gradient_accumulation micro-batches of batch_size prompts each, num_generations answers per
prompt. The advantages are computed over the whole round at once (TRL scales by the batch's spread the same way).
Grading overlaps the rest of the round: each answer goes to the graders' threads as soon as generate ends it (while
the longer answers of its micro-batch are still written), then the next micro-batches sample, and the old and
reference log-probs (which need the answers, not their rewards) are computed; the loop waits for the grades only
before the first backward pass. The grades are collected in answer order, so they are what grading one answer after
the other gives (tests/test_grpo_training.py). A
stop (SIGTERM, Ctrl-C) ends after the current step with a checkpoint; a round it interrupts is not sampled again on
resume: the next round starts with the next prompts.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer import checkpoint
from trainer.backends.peft.loop import Progress, SignalGuard, StopRequested, adapters_take_autocast_inputs
from trainer.backends.peft.state import TrainState, state_to_json
from trainer.data.prompts import Prompt
from trainer.errors import UserError
from trainer.reinforcement.rewards import Grading, Reward, Scored
from trainer.reinforcement.sampling import Samples, sample_answers

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from trainer.config import Config
    from trainer.objectives.grpo import GRPO
    from trainer.reinforcement.vllm_sampling import VllmSampler
    from trainer.rundir import MetricsLog
    from trainer.strategies import SingleProcess

COMPLETIONS_FILE = "completions.jsonl"
ZERO_SPREAD_WARNING = 0.5  # warn when more than this share of a logged step's groups had one reward for every answer


@dataclass
class GrpoRun:
    """What grpo's loop carries from setup to the end of a run."""

    config: Config
    run_dir: Path
    accelerator: Accelerator
    strategy: SingleProcess
    tokenizer: Any
    model: nn.Module  # the peft-wrapped model: generates with its adapter on, the reference with it off
    loss_module: nn.Module  # GRPOLoss, as the strategy wrapped it
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: GRPO
    rewards: list[Reward]
    prompts: list[Prompt]  # the training prompts, encoded
    state: TrainState  # batch_in_epoch counts the rounds of this epoch already sampled
    total_steps: int
    rounds_per_epoch: int
    metrics: MetricsLog | None
    resumed_at_step: int | None
    reward_sums: dict[str, list[float]] = field(default_factory=dict)  # per reward since the last log: [n, sum, sum of squares]
    sampler: VllmSampler | None = None  # vLLM samples the answers (vllm_sampling.py); None: transformers' generate


def round_prompts(prompts: Sequence[Prompt], per_round: int, epoch: int, index: int, seed: int) -> list[Prompt]:
    """The prompts of round `index` of an epoch: the epoch's own shuffle (seed + epoch), taken in order, wrapping."""
    order = list(range(len(prompts)))
    random.Random(seed + epoch).shuffle(order)
    return [prompts[order[(index * per_round + k) % len(order)]] for k in range(per_round)]


@dataclass
class Round:
    """A round's answers, one Samples per micro-batch, and their grading (under way on the pool)."""

    batches: list[Samples]
    grading: Grading

    @property
    def answers(self) -> int:
        return sum(b.answers for b in self.batches)


def sample_round(run: GrpoRun, prompts: list[Prompt], pool: ThreadPoolExecutor) -> Round:
    """The round's answers, each sent to the graders on the pool as soon as it ends (module docstring)."""
    t = run.config.training
    group = t.grpo.num_generations
    grading = Grading(run.rewards, pool)
    batches = []
    run.model.eval()  # the dropout is 0 already (GRPO.module): eval only tells generate no gradients are coming
    for start in range(0, len(prompts), t.batch_size):
        chunk, offset = prompts[start : start + t.batch_size], start * group

        def submit(index: int, text: str, chunk: list[Prompt] = chunk, offset: int = offset) -> None:
            grading.submit(offset + index, text, chunk[index // group].item)

        batches.append(sample_batch(run, chunk, submit))
    run.model.train()
    return Round(batches, grading)


def sample_batch(run: GrpoRun, chunk: list[Prompt], on_answer: Callable[[int, str], None]) -> Samples:
    """A micro-batch's answers, by vLLM where it samples this run, else by transformers' generate. vLLM failing on its
    first batch (another release's API, its memory) hands the rest of the run to generate under generation: auto, and
    ends it with the reason under vllm (vllm_sampling.give_up); later failures are the run's own."""
    settings, device = run.config.training.grpo, str(run.accelerator.device)
    if run.sampler is not None:
        try:
            return run.sampler.sample(run.model, run.tokenizer, chunk, settings, device, on_answer=on_answer)
        except Exception as error:
            if run.sampler.batches > 1 or isinstance(error, UserError):
                raise
            from trainer.reinforcement.vllm_sampling import give_up

            run.sampler.close()
            run.sampler = None
            give_up(run.config, error, "failed on its first batch")
    return sample_answers(run.model, run.tokenizer, chunk, settings, device, on_answer=on_answer)


def grade_round(run: GrpoRun, answers: Round) -> tuple[Scored, torch.Tensor]:
    """The round's grades, waiting for the graders still at work, and the advantage of every answer."""
    scored = answers.grading.scored(answers.answers)
    return scored, run.objective.advantages(torch.tensor(scored.rewards, dtype=torch.float32))


def log_probs(run: GrpoRun, samples: Samples, reference: bool) -> torch.Tensor:
    """Per-token log-probs of the answers without gradients: the policy's as it sampled them, or (reference) the start
    model's, the adapter switched off."""
    assert run.objective.loss is not None
    loss = run.objective.loss
    rows = samples.rows(torch.zeros(samples.answers), None, None)
    args = (rows["input_ids"], rows["attention_mask"], rows["completion_mask"], rows["position_ids"])
    with torch.no_grad(), run.accelerator.autocast():
        if reference:
            with run.model.disable_adapter():  # type: ignore[operator]  # a peft model (rules: grpo_reference_is_the_adapter_off)
                return loss.logps(*args)[0].float()
        return loss.logps(*args)[0].float()


def train_loop(run: GrpoRun) -> TrainState:
    """Train from run.state to run.total_steps (or a stop), checkpointing on the way."""
    cfg, acc, state, strategy = run.config, run.accelerator, run.state, run.strategy
    t, settings = cfg.training, cfg.training.grpo
    progress = Progress(run.total_steps, cfg.logging.log_every)
    started, tokens_at_start, seconds_before = time.perf_counter(), state.trained_tokens, state.seconds
    per_round = t.batch_size * t.gradient_accumulation
    with SignalGuard() as guard, adapters_take_autocast_inputs(run.model, acc.mixed_precision != "no"), \
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="grader") as pool:
        while state.step < run.total_steps:
            prompts = round_prompts(run.prompts, per_round, state.epoch, state.batch_in_epoch, t.seed)
            sampled_at = time.perf_counter()
            sampled = sample_round(run, prompts, pool)
            batches = sampled.batches
            sample_seconds = time.perf_counter() - sampled_at
            # the graders are still at work on the last answers: these passes need only the answers
            old = [log_probs(run, b, reference=False) for b in batches] if settings.num_iterations > 1 else [None] * len(batches)
            ref = [log_probs(run, b, reference=True) for b in batches] if run.objective.needs_reference else [None] * len(batches)
            waited_at = time.perf_counter()
            scored, advantages = grade_round(run, sampled)
            grade_wait_seconds = time.perf_counter() - waited_at
            _add_reward_sums(run, scored)
            state.batch_in_epoch += 1
            if state.batch_in_epoch >= run.rounds_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            splits = list(torch.split(advantages, [b.answers for b in batches]))
            window_units = sum(run.objective.units({"completion_mask": b.completion_mask}) for b in batches)
            window_tokens = int(sum(int(b.completion_mask.sum()) for b in batches))
            if run.metrics is not None:
                _write_completions(run, batches[0], scored, state.step + 1)
            for _ in range(settings.num_iterations):
                loss_total = 0.0
                for i, b in enumerate(batches):
                    rows = {k: v.to(acc.device) if isinstance(v, torch.Tensor) else v for k, v in b.rows(splits[i], old[i], ref[i]).items()}
                    loss_total += strategy.backward(run.loss_module, rows, 1.0 / max(window_units, 1), last=i == len(batches) - 1)
                strategy.step(run.optimizer, run.trainable, t.max_grad_norm)
                run.scheduler.step()
                state.step += 1
                state.trained_tokens += window_tokens
                step_loss = loss_total / max(window_units, 1)
                state.history.append([state.step, step_loss])
                elapsed = seconds_before + time.perf_counter() - started
                speed = (state.trained_tokens - tokens_at_start) / max(time.perf_counter() - started, 1e-9)
                _report_step(run, progress, step_loss, speed, elapsed, sample_seconds, grade_wait_seconds)
                sample_seconds = grade_wait_seconds = 0.0  # the round's sampling is reported with its first step
                last = state.step >= run.total_steps
                if (t.save_every and state.step % t.save_every == 0) or (t.save_every is None and state.batch_in_epoch == 0) or last or guard.requested:
                    save_checkpoint(run, f"step-{state.step}", elapsed)
                if guard.requested:
                    raise StopRequested()
                if last:
                    break
    state.seconds = seconds_before + time.perf_counter() - started
    return state


def _add_reward_sums(run: GrpoRun, scored: Scored) -> None:
    for index, reward in enumerate(run.rewards):
        scores = scored.scores(index)
        sums = run.reward_sums.setdefault(reward.name, [0.0, 0.0, 0.0])
        sums[0] += len(scores)
        sums[1] += sum(scores)
        sums[2] += sum(s * s for s in scores)
    errors = run.reward_sums.setdefault("", [0.0, 0.0, 0.0])  # the grader failures
    errors[0] += len(scored.errors)


def _take_reward_metrics(run: GrpoRun) -> dict[str, float]:
    """Per grader since the last log: the mean and spread of its scores (reward_<name>, reward_<name>_std), and the
    failed grades (grader_errors)."""
    out: dict[str, float] = {}
    for name, (n, total, squares) in run.reward_sums.items():
        if not name:
            out["grader_errors"] = int(n)
            continue
        mean = total / n if n else math.nan
        variance = (squares - n * mean * mean) / (n - 1) if n > 1 else 0.0
        out[f"reward_{name}"], out[f"reward_{name}_std"] = round(mean, 6), round(max(variance, 0.0) ** 0.5, 6)
    run.reward_sums.clear()
    return out


def _report_step(run: GrpoRun, progress: Progress, loss: float, speed: float, elapsed: float, sample_seconds: float,
                 grade_wait_seconds: float) -> None:
    """metrics.jsonl every logging.log_every steps, the progress line, and the warning when most groups teach nothing."""
    state, log_every = run.state, run.config.logging.log_every
    if run.metrics is None:
        return
    if state.step % log_every == 0 or state.step == run.total_steps:
        figures = run.objective.take_metrics() | _take_reward_metrics(run)
        run.metrics.write(step=state.step, epoch=round(state.epoch + state.batch_in_epoch / max(run.rounds_per_epoch, 1), 4), loss=loss,
                          lr=run.scheduler.get_last_lr()[0], trained_tokens=state.trained_tokens, trained_tokens_per_second=round(speed, 2),
                          sample_seconds=round(sample_seconds, 3),
                          grade_wait_seconds=round(grade_wait_seconds, 3), total_steps=run.total_steps, **figures)
        if figures.get("zero_spread_groups", 0.0) > ZERO_SPREAD_WARNING:
            progress.message(f"warning: step {state.step}: {figures['zero_spread_groups']:.0%} of the prompts got the same reward for every "
                             "answer, and such a group teaches nothing. Raise training.grpo.temperature or num_generations, use easier "
                             "prompts, or a grader that gives partial credit.")
    progress.update(state, loss, speed, (run.total_steps - state.step) * elapsed / max(state.step - (run.resumed_at_step or 0), 1))


def _write_completions(run: GrpoRun, samples: Samples, scored: Scored, step: int) -> None:
    """The first group of the round, each answer with its reward and each grader's score, into completions.jsonl."""
    if step % run.config.logging.log_every and step != run.total_steps and step != 1:
        return
    group = run.config.training.grpo.num_generations
    prompt = samples.prompts[0]
    with open(run.run_dir / COMPLETIONS_FILE, "a", encoding="utf-8") as handle:
        for k in range(group):
            grades = scored.grades[k]
            handle.write(json.dumps({
                "step": step, "file": prompt.file, "line": prompt.line, "prompt": prompt.messages[-1].content,
                "completion": samples.texts[k], "reward": None if math.isnan(scored.rewards[k]) else scored.rewards[k],
                "scores": {r.name: g.score for r, g in zip(run.rewards, grades)},
                "errors": {r.name: g.error for r, g in zip(run.rewards, grades) if g.error is not None},
            }, ensure_ascii=False) + "\n")


def keep_completions_until(run_dir: Path, step: int) -> None:
    """On resume: the completions of steps after the checkpoint belong to the lost part of the run, as metrics.jsonl's."""
    path = run_dir / COMPLETIONS_FILE
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def save_checkpoint(run: GrpoRun, name: str, seconds: float) -> None:
    """checkpoints/<name> as the sft loop writes them (trainer/backends/peft/loop.py): the same files resume either."""
    run.state.seconds = seconds
    weights, optimizer_state, staged = run.strategy.checkpoint_state(run.model, run.optimizer, run.run_dir, name)
    if run.accelerator.is_main_process:
        checkpoint.save_checkpoint(run.run_dir, name, weights, optimizer_state, run.scheduler, state_to_json(run.state),
                                   run.config.to_yaml(), staged)
        checkpoint.prune(run.run_dir, run.config.training.keep_last)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
