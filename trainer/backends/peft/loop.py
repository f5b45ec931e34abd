"""The training loop, top to bottom: accumulate, clip, step, log, evaluate, checkpoint.

The loss of an optimizer step is the sum of the losses in its whole accumulation window divided by the
window's units (trained tokens for sft, pairs for dpo and orpo), so every unit counts the same however the
examples fall into batches. The objective's loss module gives (loss sum, units) of a batch (trainer/objectives/).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer import checkpoint
from trainer.backends.peft.run import Run
from trainer.backends.peft.state import TrainState, state_to_json
from trainer.data.batching import trained_in
from trainer.distributed import is_main_process
from trainer.evaluation.loss import EvaluationCut, evaluate
from trainer.rundir import eval_perplexity

if TYPE_CHECKING:
    from accelerate import Accelerator

    from trainer.objectives.base import Objective
    from trainer.rundir import MetricsLog


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved."""


def shard(plan: list, accelerator: Accelerator) -> list:
    """This process's share of an epoch's micro-batches; every process gets the same number (collectives must match)."""
    n = accelerator.num_processes
    usable = len(plan) - len(plan) % n if len(plan) >= n else len(plan)
    return plan[:usable][accelerator.process_index :: n]


class Progress:
    """A live line on a terminal; plain log lines every `log_every` steps elsewhere (CI, files, the UI)."""

    def __init__(self, total: int, log_every: int):
        self.total = total
        self.log_every = log_every
        self.tty = sys.stderr.isatty()

    def update(self, state: TrainState, loss: float, tokens_per_second: float, seconds_left: float) -> None:
        eta = time.strftime("%H:%M:%S", time.gmtime(max(seconds_left, 0)))
        line = f"step {state.step}/{self.total}  loss {loss:.4f}  {tokens_per_second:.0f} trained tok/s  ETA {eta}"
        if self.tty:
            print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
        elif state.step % self.log_every == 0 or state.step == self.total:
            print(line, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)


class SignalGuard:
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop (after the step under way, or at the next batch of a
    validation); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.waiting_for = "this step"  # what a stop waits for, as it is said when one comes; the loop sets it while validating
        self._first = 0.0
        self._previous: dict = {}

    def __enter__(self) -> SignalGuard:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self._first > 2:  # within 2 s it is the same stop arriving twice (terminal and launcher)
                raise KeyboardInterrupt
            return
        self.requested, self._first = True, time.monotonic()
        if is_main_process():
            print(f"\nstopping after {self.waiting_for} (a checkpoint is being saved; press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def adapters_take_autocast_inputs(model: nn.Module, autocast: bool) -> contextlib.AbstractContextManager:
    """Under autocast, stop peft from casting each adapter's input up to the adapter's float32 dtype.

    autocast casts it straight back to bf16/fp16 for the matmul (the same numbers), but the copy kept for
    backward is a new tensor per adapted layer: about 300 KB per token on SmolLM2-135M, a quarter of the
    activation memory, and copies the allocator must churn through at every step.
    """
    if not autocast:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


def train_loop(run: Run) -> TrainState:
    """Train from run.state to run.total_steps (or an early stop), checkpointing on the way."""
    cfg, acc, state, strategy = run.config, run.accelerator, run.state, run.strategy
    t = cfg.training
    progress = Progress(run.total_steps, cfg.logging.log_every)
    started, tokens_at_start, seconds_before = time.perf_counter(), state.trained_tokens, state.seconds
    run.loss_module.train()
    plans: dict[int, list] = {}  # this epoch's batches, planned once (not at every step)
    with SignalGuard() as guard, adapters_take_autocast_inputs(run.model, acc.mixed_precision != "no"):
        if state.eval_pending and _validate(run, progress, guard, stop=False):  # the checkpoint's step has not been validated
            save_checkpoint(run, f"step-{state.step}", seconds_before + time.perf_counter() - started)
            raise StopRequested()
        while state.step < run.total_steps and not state.stopped_early:
            if state.epoch not in plans:
                plans = {state.epoch: shard(run.batching.plan(run.data.train, state.epoch), acc)}
            plan = plans[state.epoch]
            window = plan[state.batch_in_epoch : state.batch_in_epoch + t.gradient_accumulation]
            batches = [{k: v.to(acc.device) for k, v in run.batching.collate(b).items()} for b in window]
            # the step's loss is divided by its units (trained tokens for sft, pairs for dpo and orpo), over every process
            counts = torch.tensor([[run.objective.units(b), trained_in(b)] for b in batches], device=acc.device).sum(0)
            window_units, window_tokens = acc.reduce(counts, "sum").tolist()

            loss_total = 0.0
            for i, batch in enumerate(batches):
                # sum over the window / trained tokens in the window; DDP and ZeRO average over processes, so scale back up
                scale = acc.num_processes / max(window_units, 1)
                loss_total += strategy.backward(run.loss_module, batch, scale, last=i == len(batches) - 1)
            strategy.step(run.optimizer, run.trainable, t.max_grad_norm)
            run.scheduler.step()

            state.step += 1
            state.batch_in_epoch += len(window)
            state.trained_tokens += int(window_tokens)
            # one all-reduce for the step's loss and the stop: a process the signal reached a moment later must not go on
            loss_and_stop = acc.reduce(torch.tensor([loss_total, float(guard.requested)], device=acc.device), "sum").tolist()
            step_loss, stop = loss_and_stop[0] / max(window_units, 1), loss_and_stop[1] > 0
            state.history.append([state.step, step_loss])
            epoch_done = state.batch_in_epoch >= len(plan)
            if epoch_done:
                state.epoch += 1
                state.batch_in_epoch = 0

            elapsed = seconds_before + time.perf_counter() - started
            speed = (state.trained_tokens - tokens_at_start) / max(time.perf_counter() - started, 1e-9)
            _report_step(run.metrics, run.objective, state, progress, run.total_steps, cfg.logging.log_every,
                         run.scheduler.get_last_lr()[0], len(plan), step_loss, speed, elapsed)

            last = state.step >= run.total_steps
            if (t.eval_every and state.step % t.eval_every == 0) or (t.eval_every is None and epoch_done) or last:
                stop = _validate(run, progress, guard, stop)
            if (t.save_every and state.step % t.save_every == 0) or (t.save_every is None and epoch_done) or last or stop:
                save_checkpoint(run, f"step-{state.step}", elapsed)
            if stop:
                raise StopRequested()
    state.seconds = seconds_before + time.perf_counter() - started
    return state


def _report_step(metrics: MetricsLog | None, objective: Objective, state: TrainState, progress: Progress, total_steps: int,
                 log_every: int, lr: float, batches_in_epoch: int, loss: float, speed: float, elapsed: float) -> None:
    """metrics.jsonl every logging.log_every steps and the progress line (main process only)."""
    if metrics is None:
        return
    if state.step % log_every == 0 or state.step == total_steps:
        metrics.write(step=state.step, epoch=round(state.epoch + state.batch_in_epoch / max(batches_in_epoch, 1), 4),
                      loss=loss, lr=lr, trained_tokens=state.trained_tokens,
                      trained_tokens_per_second=round(speed, 2), total_steps=total_steps, **objective.take_metrics())
    progress.update(state, loss, speed, (total_steps - state.step) * elapsed / max(state.step, 1))


def save_checkpoint(run: Run, name: str, seconds: float | None) -> None:
    """checkpoints/<name> of the run as it is now; every process calls it (the strategy gathers what they hold)."""
    if seconds is not None:
        run.state.seconds = seconds
    run.accelerator.wait_for_everyone()
    weights, optimizer_state, staged = run.strategy.checkpoint_state(run.model, run.optimizer, run.run_dir, name)
    if run.accelerator.is_main_process:
        checkpoint.save_checkpoint(run.run_dir, name, weights, optimizer_state, run.scheduler,
                                   state_to_json(run.state), run.config.to_yaml(), staged)
        if name.startswith("step-"):
            checkpoint.prune(run.run_dir, run.config.training.keep_last)
    run.accelerator.wait_for_everyone()


def _validate(run: Run, progress: Progress, guard: SignalGuard, stop: bool) -> bool:
    """The validation due at this step; True when the run stops instead: `stop` (the processes agreed on one after the
    step) or a stop that cut the pass short (at the same batch in every process). A cut pass counts for nothing: no
    eval row, no best checkpoint, no early stopping; the resumed run validates this step first."""
    run.state.eval_pending = False  # unless a stop leaves it to the resumed run
    if not run.data.validation:
        return stop
    if stop:
        return _leave_validation(run, progress, f"step {run.state.step}'s validation is left for the resumed run")
    guard.waiting_for = "this validation batch"
    try:
        eval_loss = evaluate(run.strategy.eval_module(run.loss_module), run.data.validation, run.accelerator, run.eval_batching,
                             stop=lambda: guard.requested)
    except EvaluationCut as cut:
        run.objective.take_metrics("eval_")  # the rewards of the pairs it did see count for nothing either
        return _leave_validation(run, progress, f"validation cut short at {cut.done} of {cut.total} batches (the resumed run validates again)")
    finally:
        guard.waiting_for = "this step"
    _track_eval(run, progress, eval_loss)
    return False


def _leave_validation(run: Run, progress: Progress, what: str) -> bool:
    run.state.eval_pending = True  # saved in the checkpoint: --resume validates its step before training on
    if run.accelerator.is_main_process:
        progress.message(f"stopping: {what}; saving a checkpoint")
    return True


def _track_eval(run: Run, progress: Progress, eval_loss: float | None) -> None:
    """A whole validation's loss: its metrics row, the best checkpoint, early stopping."""
    state, stopping = run.state, run.config.training.early_stopping
    if eval_loss is None:
        return
    extra = run.objective.take_metrics("eval_")
    state.last_eval_loss = eval_loss
    improved = state.best_eval_loss is None or eval_loss < state.best_eval_loss - (stopping.min_delta if stopping else 0.0)
    if improved:
        state.best_eval_loss, state.best_step, state.evals_without_improvement = eval_loss, state.step, 0
        if stopping:
            save_checkpoint(run, "best", None)
    else:
        state.evals_without_improvement += 1
    if run.metrics is not None and not extra:
        run.metrics.write_eval(state.step, eval_loss)
        progress.message(f"step {state.step}: validation loss {eval_loss:.4f} (perplexity {eval_perplexity(eval_loss):.2f})")
    elif run.metrics is not None:  # a preference objective: its loss has no perplexity; its rewards say more
        run.metrics.write(step=state.step, eval_loss=eval_loss, **extra)
        progress.message(f"step {state.step}: validation loss {eval_loss:.4f}, reward accuracy {extra['eval_reward_accuracy']:.2f}, "
                         f"margin {extra['eval_reward_margin']:.3f}")
    if stopping and state.evals_without_improvement >= stopping.patience:
        state.stopped_early = True  # in every process (each saw the same loss); said by the main one
        if run.accelerator.is_main_process:
            progress.message(
                f"early stopping at step {state.step}: no improvement for {stopping.patience} evaluation(s); "
                f"the best checkpoint (step {state.best_step}, loss {state.best_eval_loss:.4f}) is the result"
            )
