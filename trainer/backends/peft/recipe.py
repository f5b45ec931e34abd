"""The peft backend's recipe: setup -> train (loop.py) -> save -> cleanup, each step a small named function.

`train` is the whole lifecycle. `setup` calls, in order: the accelerator and
distributed strategy, the run directory, the data, the model, the optimizer,
the scheduler and the resume; the result is a typed `Run` the loop carries.
Only the main process writes files.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer import checkpoint
from trainer.backends.peft.loop import StopRequested, train_loop
from trainer.backends.peft.run import Run
from trainer.backends.peft.state import TrainState, state_from_json
from trainer.config import Config
from trainer.data.batching import Batching, PairBatching
from trainer.data.pipeline import PreparedData, prepare_data
from trainer.errors import RunStopped, UserError, resume_hint
from trainer.methods import method_for
from trainer.methods.base import Method
from trainer.objectives import objective_for
from trainer.objectives.base import Objective
from trainer.objectives.preference import Preference, load_or_compute_reference
from trainer.rundir import MetricsLog, RunSummary, common_system_prompt, guard_run_dir, merge_saved_adapter, plot_losses, write_merged, write_model_card
from trainer.steps import steps_per_epoch, total_steps
from trainer.strategies import SingleProcess, choose_strategy, make_accelerator

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase


def train(config: Config, run_dir: Path, resume: bool) -> Path:
    """The whole run: setup, the loop, the outputs; the strategy's cleanup whatever happens."""
    run = setup(config, run_dir, resume)
    try:
        _train(run)
    except BaseException as exc:
        run.strategy.end(together=isinstance(exc, (UserError, SystemExit)))  # a stop all processes agreed on (RunStopped), or not
        raise
    run.strategy.end(together=True)
    return run_dir


def _train(run: Run) -> None:
    config, run_dir = run.config, run.run_dir
    try:
        state = train_loop(run)
    except StopRequested:
        if not run.accelerator.is_main_process:
            raise RunStopped("") from None  # exit 3 in every process; the main one says where the checkpoint is
        raise RunStopped(
            f"stopped at step {run.state.step}; the checkpoint is in {checkpoint.checkpoints_dir(run_dir)}. {resume_hint()}"
        ) from None
    best = checkpoint.checkpoints_dir(run_dir) / "best"
    if state.stopped_early and best.is_dir():
        run.strategy.load(best, run.model, run.optimizer, run.scheduler)
    weights = run.strategy.final_weights(run.model)  # every process takes part in gathering sharded weights
    if run.accelerator.is_main_process:
        save_outputs(run, weights)
        _say(run.accelerator, f"Done in {state.seconds / 60:.1f} min. Run directory: {run_dir}")
        if config.output.push_to_hub is not None:
            from trainer.hub import push_run

            target = config.output.push_to_hub
            _say(run.accelerator, f"Uploaded to {push_run(run_dir, target.repo_id, target.private)}")
    run.accelerator.wait_for_everyone()


def _say(accelerator: Accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, file=sys.stderr, flush=True)


# --- setup, step by step -------------------------------------------------------------------------------------------

def setup(config: Config, run_dir: Path, resume: bool) -> Run:
    from accelerate.utils import set_seed

    from trainer.models import mixed_precision

    device, accelerator, strategy = setup_accelerator(config)
    precision = mixed_precision(config, device)
    newest = setup_run_dir(run_dir, resume, accelerator)
    set_seed(config.training.seed)
    objective, method = objective_for(config), method_for(config)
    tokenizer, data = setup_data(config, accelerator, objective)
    batching = objective.batching(config, tokenizer.pad_token_id)
    model, loss_module, trainable = setup_model(config, device, precision, accelerator, strategy, objective)
    batching, eval_batching = setup_reference(config, run_dir, objective, method, model, batching, data, accelerator)
    optimizer = setup_optimizer(config, trainable, device)
    per_epoch = steps_per_epoch(len(batching.plan(data.train, 0)), accelerator.num_processes, config.training.gradient_accumulation)
    steps = total_steps(config, per_epoch)
    loss_module, optimizer = strategy.prepare(loss_module, optimizer, config, precision)
    scheduler = setup_scheduler(config, optimizer, steps)
    optimizer = strategy.prepare_optimizer(optimizer)
    state = setup_resume(newest, strategy, model, optimizer, scheduler, steps, accelerator)
    metrics = None
    if accelerator.is_main_process:
        metrics = MetricsLog(run_dir / "metrics.jsonl", state.step if newest is not None else None, config.logging.report_to == "tensorboard")
        (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    return Run(config, run_dir, accelerator, strategy, tokenizer, model, loss_module, trainable, optimizer, scheduler, data,
               objective, method, batching, eval_batching, state, steps, metrics, state.step if newest is not None else None)


def setup_accelerator(config: Config) -> tuple[str, Accelerator, SingleProcess]:
    """(device, accelerator, strategy) of this process."""
    from trainer.hardware import Hardware

    device = Hardware.detect().device(config.backend.peft.device)
    accelerator = make_accelerator(config, device)
    if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        raise UserError(f"this run was launched with accelerate's {accelerator.distributed_type.name} settings, which would wrap "
                        "the model a second time; set distributed.strategy in the YAML (fsdp shards the model) and run "
                        "`trainer --config` (or torchrun -m trainer).")
    return device, accelerator, choose_strategy(config, accelerator)


def setup_run_dir(run_dir: Path, resume: bool, accelerator: Accelerator) -> Path | None:
    """Check the run directory (main process) and return the checkpoint to resume from, if any.

    Several processes resume if any of them was asked to: a process the elastic agent started again after a node
    failed resumes (engine.run), and so must the processes of a node that joined it afresh."""
    if accelerator.num_processes > 1:
        resume = bool(accelerator.reduce(torch.tensor([int(resume)], device=accelerator.device), "sum").item())
    if accelerator.is_main_process:
        guard_run_dir(run_dir, resume)
    accelerator.wait_for_everyone()
    found = checkpoint.complete_checkpoints(run_dir)
    return found[-1] if resume and found else None


def setup_data(config: Config, accelerator: Accelerator, objective: Objective) -> tuple[PreTrainedTokenizerBase, PreparedData]:
    """The tokenizer and the tokenized training and validation examples."""
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer, progress=accelerator.is_main_process)
    _say(accelerator, f"Data: {len(data.train)} training and {len(data.validation)} validation {objective.unit}, "
         f"{int(data.train.sides().column('trained').sum())} trained tokens per epoch")
    if data.features:
        _say(accelerator, f"Chat template ({config.data.chat_template}): {data.features}")
    return tokenizer, data


def setup_model(config: Config, device: str, precision: str, accelerator: Accelerator, strategy: SingleProcess,
                objective: Objective) -> tuple[nn.Module, nn.Module, list[nn.Parameter]]:
    """(model with its adapter, the objective's loss module as the strategy wrapped it, the trainable parameters)."""
    from trainer.models import add_adapter, load_model

    _say(accelerator, f"Loading {config.model.name_or_path} on {device} ...")
    place, empty = strategy.loading(device)
    model = add_adapter(load_model(config, place, strategy.zero3_loading(config, precision), empty=empty), config)
    if config.model.adapter is not None:
        _say(accelerator, f"Starting from the adapter in {config.model.adapter}")
    loss_module = strategy.wrap(objective.module(model), model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    _say(accelerator, f"Method {config.training.method}: {_count(trainable):,} trainable of {_count(model.parameters()):,} parameters")
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        _say(accelerator, f"ZeRO-3: the weights were built partitioned; each of the {accelerator.num_processes} processes holds its share")
    return model, loss_module, trainable


def setup_reference(config: Config, run_dir: Path, objective: Objective, method: Method, model: nn.Module,
                    batching: Batching | PairBatching, data: PreparedData,
                    accelerator: Accelerator) -> tuple[Batching | PairBatching, Batching | PairBatching]:
    """(training batching, validation batching); for dpo with the reference model's log-probs of every pair, computed
    from the model as it starts (before a resume loads later weights) or read back from the run directory."""
    if not objective.needs_reference:
        return batching, batching
    assert isinstance(objective, Preference) and objective.loss is not None and isinstance(batching, PairBatching)
    started = time.perf_counter()
    splits = {"train": data.train, "validation": data.validation}
    fresh = config.model.adapter is None and method.has_adapter
    reference = load_or_compute_reference(run_dir, objective.loss, model, batching, splits, accelerator, fresh)
    _say(accelerator, f"Reference log-probabilities of {len(data.train) + len(data.validation)} pairs: "
         f"{time.perf_counter() - started:.1f} s ({'the model with its adapter switched off' if fresh else 'the model as it starts'})")
    with_reference = replace(batching, reference=reference)
    return with_reference, replace(with_reference, split="validation")


def _count(params: Any) -> int:
    """How many numbers the parameters hold, whole (a ZeRO-3 process holds a share of each: ds_numel is the whole)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


def setup_optimizer(config: Config, trainable: list[nn.Parameter], device: str) -> torch.optim.Optimizer:
    """training.optimizer over the trainable parameters; weight decay on matrices only."""
    t = config.training
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.learning_rate, fused=device == "cuda")
    if t.optimizer == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=t.learning_rate)
    return torch.optim.SGD(groups, lr=t.learning_rate, momentum=0.9)


def setup_scheduler(config: Config, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    import math

    from transformers import get_scheduler

    t = config.training
    return get_scheduler(t.scheduler, optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * steps), num_training_steps=steps)


def setup_resume(newest: Path | None, strategy: SingleProcess, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int, accelerator: Accelerator) -> TrainState:
    """The state to start from: the newest checkpoint's (its weights, optimizer, scheduler and RNG restored), or a new one."""
    if newest is None:
        return TrainState()
    state = state_from_json(strategy.load(newest, model, optimizer, scheduler))
    _say(accelerator, f"Resuming from {newest} (step {state.step} of {steps})")
    return state


# --- save ----------------------------------------------------------------------------------------------------------

def save_outputs(run: Run, gathered: dict | None = None) -> None:
    """The run directory: model (adapter or weights) with its tokenizer, optionally merged, card, metrics, curves.

    `gathered`: the trainable weights of a sharded (fsdp) run, whole, which this process's own parameters are not.
    """
    cfg, run_dir = run.config, run.run_dir
    model_dir = run_dir / "model"
    tmp = run_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(tmp, **({"state_dict": gathered} if gathered is not None else {}))
    run.tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    if cfg.output.merge_adapter and run.method.has_adapter:
        if gathered is None:
            write_merged(run_dir, run.model, run.tokenizer)
        else:  # the base weights are sharded: merge from the saved adapter and a fresh copy of the base model
            merge_saved_adapter(run_dir)
    summary = summarise(run)
    summary.write(run_dir)
    assert run.metrics is not None  # the main process's
    plot_losses(run.state.history, run.metrics, run_dir / "loss.png")
    write_model_card(run_dir, cfg, summary)
    record_throughput(run)


def record_throughput(run: Run) -> None:
    """The run's tokens and seconds for `trainer plan`'s next estimate (trainer.throughput). A resumed run's count
    from its start, as its checkpoint kept them; one that resumed at its last step trained nothing here to measure."""
    from trainer.throughput import Measurement, record, throughput_key

    state = run.state
    if state.seconds > 0 and state.trained_tokens > 0 and state.step != run.resumed_at_step:
        record(throughput_key(run.config), Measurement(state.seconds, state.step, state.trained_tokens, run.resumed_at_step))


def summarise(run: Run) -> RunSummary:
    state = run.state
    speed = state.trained_tokens / state.seconds if state.seconds else 0.0
    return RunSummary(
        backend="peft",
        steps=state.step,
        epochs=state.epoch + state.batch_in_epoch / max(len(run.batching.plan(run.data.train, state.epoch)), 1),
        final_train_loss=state.history[-1][1] if state.history else None,
        final_eval_loss=state.last_eval_loss,
        best_eval_loss=state.best_eval_loss,
        best_step=state.best_step,
        stopped_early=state.stopped_early,
        trained_tokens=state.trained_tokens,
        train_seconds=state.seconds,
        trained_tokens_per_second=speed,
        common_system_prompt=common_system_prompt(run.data.examples(0)),
    )
