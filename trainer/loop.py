"""The training loop, top to bottom: accumulate, clip, step, log, evaluate, checkpoint.

The loss of an optimizer step is the sum of the token losses in its whole
accumulation window divided by the number of trained tokens in that window, so
every trained token counts the same however the examples fall into batches.
Only the positions in the loss go through the LM head: on chat data most
tokens are prompt, and their logits (vocabulary-sized) would be most of the
memory.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from trainer import checkpoint
from trainer.config import Config
from trainer.data.batching import collate_packed, collate_padded, length_grouped_batches, pack_examples
from trainer.data.tokenize import IGNORE, Tokenized
from trainer.distributed import is_main_process
from trainer.rundir import eval_perplexity

if TYPE_CHECKING:
    from trainer.recipe import Run


class LossOnTrainedTokens(nn.Module):
    """Summed cross-entropy over the trained positions only, and how many there were.

    It wraps the model so that distributed wrappers (DDP) see one forward call.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.decoder, self.head, self.choose_kernel = decoder_and_head(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with attention_kernel_for(input_ids) if self.choose_kernel else contextlib.nullcontext():
            hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state  # a KV cache only helps generation
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = self.head(hidden[:, :-1][keep])  # (trained tokens, vocab): the only logits computed
        loss_sum = nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss_sum, keep.sum()


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module, bool]:
    """The model's decoder and LM head (under a peft wrapper too), and whether the loss may choose the attention kernel:
    not under gradient checkpointing, which recomputes the forward pass during backward, outside any choice made here."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpointing = "is_activation_checkpointing" if hasattr(type(causal_lm), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return causal_lm.get_decoder(), causal_lm.get_output_embeddings(), not getattr(causal_lm, checkpointing, False)


SHORT_ROWS_ON_CPU = 160


def attention_kernel_for(input_ids: torch.Tensor) -> contextlib.AbstractContextManager:
    """On CPU, PyTorch's plain (math) attention kernel for rows of up to SHORT_ROWS_ON_CPU tokens, its flash kernel above.

    The CPU flash kernel's backward is slow on short rows: forward + backward of one SmolLM2 layer's attention
    (4 rows, bf16, 2 cores) took 11.1 ms against the math kernel's 6.4 ms at 141 tokens; they are even near 230
    tokens and flash is ahead from there (58 against 98 ms at 512). The math kernel keeps the whole attention
    matrix, so the limit stays below the even point: a recipe epoch ran about 6% faster than with flash throughout,
    at the same peak memory. The kernel chosen in the forward pass also does the backward.
    """
    if input_ids.device.type != "cpu" or input_ids.shape[-1] > SHORT_ROWS_ON_CPU:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained on
    trained_tokens: int = 0
    seconds: float = 0.0  # training time before this process started
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_eval_loss: float | None = None
    history: list[list] = field(default_factory=list)  # (step, loss) of every optimizer step


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved."""


def shard(plan: list, accelerator: Any) -> list:
    """This process's share of an epoch's micro-batches; every process gets the same number (collectives must match)."""
    n = accelerator.num_processes
    usable = len(plan) - len(plan) % n if len(plan) >= n else len(plan)
    return plan[:usable][accelerator.process_index :: n]


@dataclass(frozen=True)
class Batching:
    """How examples become micro-batches and tensors: all that training and evaluation need of the config for it."""

    batch_size: int
    seed: int
    packing: bool
    max_seq_length: int
    pad_id: int
    flash: bool  # flash-attention separates packed examples by their position ids, so no 4-D mask is made

    @classmethod
    def of(cls, config: Config, pad_id: int) -> Batching:
        return cls(config.training.batch_size, config.training.seed, config.data.packing, config.data.max_seq_length,
                   pad_id, config.model.attn_implementation == "flash_attention_2")

    def plan(self, examples: Sequence[Tokenized], epoch: int) -> list[list]:
        """This epoch's micro-batches as example indices (PlannedBatch): lists of indices, or with packing lists of
        packed rows. Only the lengths are read (a memory-mapped split has them as a column), so planning never loads
        the examples."""
        lengths = examples_lengths(examples)
        if self.packing:
            rows = pack_examples(lengths, self.max_seq_length, self.seed, epoch)
            return [PlannedBatch(rows[i : i + self.batch_size], examples) for i in range(0, len(rows), self.batch_size)]
        return [PlannedBatch(batch, examples) for batch in length_grouped_batches(lengths, self.batch_size, self.seed, epoch)]

    def collate(self, batch: PlannedBatch) -> dict:
        """The tensors of one planned micro-batch; only its examples are read."""
        examples = batch.examples
        if self.packing:
            return collate_packed([[examples[i] for i in row] for row in batch], self.pad_id, with_mask=not self.flash)
        return collate_padded([examples[i] for i in batch], self.pad_id)


class PlannedBatch(list):
    """A micro-batch as the indices of its examples (or packed rows of them), with the split they index."""

    def __init__(self, indices: list, examples: Sequence[Tokenized]):
        super().__init__(indices)
        self.examples = examples


def examples_lengths(examples: Sequence[Tokenized]) -> list[int]:
    """Each example's length in tokens: the lengths column of a memory-mapped split, or counted from a list."""
    column = getattr(examples, "lengths", None)
    return column.tolist() if column is not None else [len(e.input_ids) for e in examples]


def trained_in(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


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
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
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
            print("\nstopping after this step (a checkpoint is being saved; press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def evaluate(module: nn.Module, examples: Sequence[Any], accelerator: Any, batching: Any) -> float | None:
    """Mean loss per unit of `module` (a LossOnTrainedTokens per trained token, or a PreferenceLoss per pair; unwrapped)
    over `examples` (Tokenized, or TokenizedPair with a PairBatching); None without any.

    Every process of a run calls it and gets the same number."""
    if not examples:
        return None
    acc = accelerator
    module.eval()
    plan = batching.plan(examples, epoch=0)
    mine = plan[acc.process_index :: acc.num_processes]
    total = torch.zeros(2, dtype=torch.float64, device=acc.device)
    with torch.no_grad():
        # every process runs as many batches (fsdp gathers each layer's weights together); a short share repeats one uncounted
        for i in range(math.ceil(len(plan) / acc.num_processes)):
            batch = mine[i] if i < len(mine) else plan[0]
            tensors = {k: v.to(acc.device) for k, v in batching.collate(batch).items()}
            with acc.autocast():
                loss_sum, count = module(**tensors)
            if i < len(mine):
                total += torch.stack([loss_sum.double(), count.double()])
    total = acc.reduce(total, "sum")
    module.train()
    return float(total[0] / total[1]) if total[1] > 0 else None


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
            _report_step(run, progress, len(plan), step_loss, speed, elapsed)

            last = state.step >= run.total_steps
            if (t.eval_every and state.step % t.eval_every == 0) or (t.eval_every is None and epoch_done) or last:
                _evaluate_and_track(run, progress)
            if (t.save_every and state.step % t.save_every == 0) or (t.save_every is None and epoch_done) or last or stop:
                save_checkpoint(run, f"step-{state.step}", elapsed)
            if stop:
                raise StopRequested()
    state.seconds = seconds_before + time.perf_counter() - started
    return state


def _report_step(run: Run, progress: Progress, batches_in_epoch: int, loss: float, speed: float, elapsed: float) -> None:
    """metrics.jsonl every logging.log_every steps and the progress line (main process only)."""
    state = run.state
    if run.metrics is None:
        return
    if state.step % run.config.logging.log_every == 0 or state.step == run.total_steps:
        run.metrics.write(step=state.step, epoch=round(state.epoch + state.batch_in_epoch / max(batches_in_epoch, 1), 4),
                          loss=loss, lr=run.scheduler.get_last_lr()[0], trained_tokens=state.trained_tokens,
                          trained_tokens_per_second=round(speed, 2), total_steps=run.total_steps, **run.objective.take_metrics())
    progress.update(state, loss, speed, (run.total_steps - state.step) * elapsed / max(state.step, 1))


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


def _evaluate_and_track(run: Run, progress: Progress) -> None:
    state, stopping = run.state, run.config.training.early_stopping
    eval_loss = evaluate(run.strategy.eval_module(run.loss_module), run.data.validation, run.accelerator, run.eval_batching)
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


def state_to_json(state: TrainState) -> dict:
    return asdict(state)


def state_from_json(data: dict) -> TrainState:
    return TrainState(**data)
