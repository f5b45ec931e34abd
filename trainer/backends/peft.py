"""The built-in backend: our own training loop on transformers + peft + accelerate.

Lifecycle: setup (data, model, optimizer, resume) -> train (loop.py) -> save
(model, card, curves) -> cleanup. Only the main process writes files.
"""
from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer import checkpoint
from trainer.config import Config
from trainer.data.pipeline import PreparedData, prepare_data
from trainer.distributed import deepspeed_engine, end_deepspeed, shard_model, zero3_loading
from trainer.errors import UserError
from trainer.loop import LossOnTrainedTokens, StopRequested, TrainState, epoch_plan, shard, state_from_json, state_to_json, train_loop
from trainer.rundir import MetricsLog, merge_saved_adapter, plot_losses, record_throughput, write_merged, write_model_card


@dataclass
class Run:
    config: Config
    run_dir: Path
    accelerator: object
    tokenizer: object
    model: object  # the peft-wrapped (or full) model
    loss_module: object  # the same model behind LossOnTrainedTokens, prepared by accelerate (or DeepSpeed's engine)
    trainable: list
    optimizer: object
    scheduler: object
    data: PreparedData
    state: TrainState
    total_steps: int
    pad_id: int
    flash: bool
    metrics: MetricsLog | None
    engine: object | None = None  # DeepSpeed's, under distributed.strategy: deepspeed (it steps the optimizer)

    def save_checkpoint(self, name: str, seconds: float | None) -> None:
        if seconds is not None:
            self.state.seconds = seconds
        self.accelerator.wait_for_everyone()
        if self.engine is not None:  # every process writes its ZeRO shard; the main one adds the rest
            weights, optimizer_state = checkpoint.gather_zero_weights(self.model), None
            staged = checkpoint.stage_zero_state(self.engine, self.run_dir, name)
        else:
            weights, optimizer_state = checkpoint.gather_trainable(self.model, self.optimizer)  # every process: fsdp's shards
            staged = None
        if self.accelerator.is_main_process:
            checkpoint.save_checkpoint(self.run_dir, name, weights, optimizer_state, self.scheduler,
                                       state_to_json(self.state), self.config.to_yaml(), staged)
            if name.startswith("step-"):
                checkpoint.prune(self.run_dir, self.config.training.keep_last)
        self.accelerator.wait_for_everyone()


class PeftBackend:
    name = "peft"

    def check(self, config: Config) -> list[tuple[tuple, str]]:
        return []

    def train(self, config: Config, run_dir: Path, resume: bool) -> Path:
        run = setup(config, run_dir, resume)
        if run.engine is None:
            return self._train(run)
        try:
            done = self._train(run)
        except BaseException as exc:
            end_deepspeed(together=isinstance(exc, (UserError, SystemExit)))  # a stop all processes agreed on, or not
            raise
        end_deepspeed(together=True)
        return done

    def _train(self, run: Run) -> Path:
        config, run_dir = run.config, run.run_dir
        try:
            state = train_loop(run)
        except StopRequested:
            if not run.accelerator.is_main_process:
                raise SystemExit(2) from None  # the main process says where the checkpoint is
            raise UserError(
                f"stopped at step {run.state.step}; the checkpoint is in {checkpoint.checkpoints_dir(run_dir)}. "
                "Continue with the same command plus --resume."
            ) from None
        if state.stopped_early and (checkpoint.checkpoints_dir(run_dir) / "best").is_dir():
            checkpoint.load_checkpoint(checkpoint.checkpoints_dir(run_dir) / "best", run.model, run.optimizer, run.scheduler, run.engine)
        weights = None  # every process takes part in gathering sharded weights
        if config.distributed.strategy == "fsdp":
            weights = checkpoint.gather_weights(run.model)
        elif run.engine is not None:
            weights = checkpoint.gather_zero_weights(run.model)
        if run.accelerator.is_main_process:
            save_outputs(run, weights)
            _say(run.accelerator, f"Done in {state.seconds / 60:.1f} min. Run directory: {run_dir}")
            if config.output.push_to_hub is not None:
                from trainer.hub import push_run

                target = config.output.push_to_hub
                _say(run.accelerator, f"Uploaded to {push_run(run_dir, target.repo_id, target.private)}")
        run.accelerator.wait_for_everyone()
        return run_dir


def _say(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, file=sys.stderr, flush=True)


def make_accelerator(config: Config, device: str):
    """The Accelerator for a run on `device`, with the run's mixed precision."""
    import torch
    from accelerate import Accelerator

    from trainer.models import mixed_precision

    if not torch.distributed.is_initialized():
        # accelerate keeps its settings process-wide; a second run in the same process (tests, notebooks) may differ
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    # under deepspeed the engine casts the model itself (deepspeed.json), so nothing is autocast
    precision = "no" if config.distributed.strategy == "deepspeed" else mixed_precision(config, device)
    return Accelerator(mixed_precision=precision, cpu=device == "cpu")


def setup(config: Config, run_dir: Path, resume: bool) -> Run:
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from trainer.hardware import Hardware
    from trainer.models import add_adapter, load_model, load_tokenizer, mixed_precision

    t = config.training
    device = Hardware.detect().device(config.backend.peft.device)
    precision = mixed_precision(config, device)
    accelerator = make_accelerator(config, device)
    say = functools.partial(_say, accelerator)
    if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        raise UserError(f"this run was launched with accelerate's {accelerator.distributed_type.name} settings, which would wrap "
                        "the model a second time; set distributed.strategy in the YAML (fsdp shards the model) and run "
                        "`trainer --config` (or `accelerate launch` with the config it writes to <output.dir>/launch/).")

    if accelerator.is_main_process:
        _check_run_dir(run_dir, resume)
    accelerator.wait_for_everyone()
    found = checkpoint.complete_checkpoints(run_dir)
    newest = found[-1] if resume and found else None
    set_seed(t.seed)
    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer)
    say(f"Data: {len(data.train)} training and {len(data.validation)} validation examples, "
        f"{sum(e.trained for e in data.train)} trained tokens per epoch")
    if data.features:
        say(f"Chat template ({config.data.chat_template}): {data.features}")

    say(f"Loading {config.model.name_or_path} on {device} ...")
    model = add_adapter(load_model(config, device, zero3_loading(config, precision)), config)
    if config.distributed.strategy == "fsdp":
        loss_module = shard_model(LossOnTrainedTokens(model), model)  # replaces the parameters by shards
    elif config.distributed.strategy == "deepspeed":
        loss_module = LossOnTrainedTokens(model)  # the engine wraps it once the optimizer exists
    else:
        loss_module = accelerator.prepare(LossOnTrainedTokens(model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    say(f"Method {t.method}: {_count(trainable):,} trainable of {_count(model.parameters()):,} parameters")
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        say(f"ZeRO-3: the weights were built partitioned; each of the {accelerator.num_processes} processes holds its share")

    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, fused=device == "cuda")
    elif t.optimizer == "adamw_8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, lr=t.learning_rate)
    else:
        optimizer = torch.optim.SGD(groups, lr=t.learning_rate, momentum=0.9)

    per_epoch = len(shard(epoch_plan(data.train, config, 0), accelerator)) or 1
    steps_per_epoch = math.ceil(per_epoch / t.gradient_accumulation)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    engine = None
    if config.distributed.strategy == "deepspeed":
        # ZeRO takes over the optimizer's state and drops its empty param groups; the scheduler, made after, sets the
        # learning rate in those that are left
        loss_module = engine = deepspeed_engine(loss_module, optimizer, config, precision)
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    if engine is None:
        optimizer = accelerator.prepare(optimizer)
    state = TrainState()
    if newest is not None:
        state = state_from_json(checkpoint.load_checkpoint(newest, model, optimizer, scheduler, engine))
        say(f"Resuming from {newest} (step {state.step} of {total_steps})")
    metrics = None
    if accelerator.is_main_process:
        metrics = MetricsLog(run_dir / "metrics.jsonl", state.step if newest is not None else None, config.logging.report_to == "tensorboard")
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    return Run(config, run_dir, accelerator, tokenizer, model, loss_module, trainable, optimizer, scheduler, data, state,
               total_steps, tokenizer.pad_token_id, config.model.attn_implementation == "flash_attention_2", metrics, engine)


def _count(params) -> int:
    """How many numbers the parameters hold, whole (a ZeRO-3 process holds a share of each: ds_numel is the whole)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Clear what a killed save left, and refuse to overwrite an earlier run silently."""
    checkpoint.remove_partial_saves(run_dir)
    if resume:
        return
    if checkpoint.complete_checkpoints(run_dir) or (run_dir / "model").exists():
        raise UserError(
            f"output.dir {run_dir} already holds a run. Add --resume (or resume: auto) to continue it, "
            "or choose another output.dir (e.g. --set output.dir=runs/new) to start fresh."
        )


def save_outputs(run: Run, gathered: dict | None = None) -> None:
    """The run directory: model (adapter or weights) with its tokenizer, optionally merged, card, metrics, curves.

    `gathered`: the trainable weights of a sharded (fsdp) run, whole, which this process's own parameters are not.
    """
    cfg, run_dir, state = run.config, run.run_dir, run.state
    model_dir = run_dir / "model"
    tmp = run_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(tmp, **({"state_dict": gathered} if gathered is not None else {}))
    run.tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    if cfg.output.merge_adapter and cfg.training.method != "full":
        if gathered is None:
            write_merged(run_dir, run.model, run.tokenizer)
        else:  # the base weights are sharded: merge from the saved adapter and a fresh copy of the base model
            merge_saved_adapter(run_dir)
    speed = state.trained_tokens / state.seconds if state.seconds else 0.0
    summary = {
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / max(len(epoch_plan(run.data.train, cfg, state.epoch)), 1), 3),
        "final_train_loss": round(state.history[-1][1], 4) if state.history else None,
        "final_eval_loss": round(state.last_eval_loss, 4) if state.last_eval_loss is not None else None,
        "best_eval_loss": round(state.best_eval_loss, 4) if state.best_eval_loss is not None else None,
        "best_step": state.best_step,
        "stopped_early": state.stopped_early,
        "trained_tokens": state.trained_tokens,
        "train_seconds": round(state.seconds, 1),
        "trained_tokens_per_second": round(speed, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plot_losses(state.history, run.metrics, run_dir / "loss.png")
    write_model_card(run_dir, cfg, summary)
    if speed:
        from trainer.data.report import throughput_key

        record_throughput(throughput_key(cfg), speed)
