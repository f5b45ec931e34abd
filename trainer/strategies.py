"""One object per distributed mode, chosen once at setup: how the model is wrapped, stepped, gathered and saved.

`choose_strategy(config)` picks it from distributed.strategy; the recipe, the
loop and checkpointing then call it without asking which one it is.

  SingleProcess  one process; accelerate prepares the model (autocast) and the optimizer
  DDP            the same, in several processes: accelerate's DistributedDataParallel averages the gradients
  FSDP           the model sharded with FSDP2 (distributed.shard_model); checkpoints gather the shards
  DeepSpeed      DeepSpeed's engine (ZeRO-2/3) holds the model and optimizer, steps and clips, saves its shards

Nothing here imports DeepSpeed unless the run uses it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, cast

from torch import nn

from trainer import checkpoint
from trainer.config import Config
from trainer.distributed import deepspeed_engine, end_deepspeed, fill_shards_from_first, shard_model, whole_weights, zero3_loading

if TYPE_CHECKING:
    from accelerate import Accelerator
    from deepspeed import DeepSpeedEngine
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler


def make_accelerator(config: Config, device: str) -> Accelerator:
    """The Accelerator for a run on `device`, with the run's mixed precision (none under deepspeed)."""
    import torch
    from accelerate import Accelerator

    if not torch.distributed.is_initialized():
        # accelerate keeps its settings process-wide; a second run in the same process (tests, notebooks) may differ
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    precision = choose_strategy(config).accelerator_precision(config, device)
    return Accelerator(mixed_precision=precision, cpu=device == "cpu")


class SingleProcess:
    """One process: accelerate prepares the loss module (autocast) and the optimizer; the loop clips and steps."""

    name = "none"

    def __init__(self, accelerator: Accelerator | None = None):
        # None only where a strategy is asked for its settings before the run has an accelerator (make_accelerator,
        # models.load_model's zero3_loading); every method that steps or saves runs with one
        self.accelerator = cast("Accelerator", accelerator)

    def accelerator_precision(self, config: Config, device: str) -> str:
        from trainer.models import mixed_precision

        return mixed_precision(config, device)

    def zero3_loading(self, config: Config, precision: str) -> dict | None:
        """The ZeRO-3 settings to build the model partitioned with (see models.load_model); None: load it whole."""
        return None

    def loading(self, device: str) -> tuple[str, bool]:
        """(the device this process loads the model on, whether it builds it empty on the meta device instead)."""
        return device, False

    def wrap(self, loss_module: nn.Module, model: nn.Module) -> nn.Module:
        """The loss module the loop calls, before the optimizer is made (a sharding strategy replaces parameters)."""
        return self.accelerator.prepare(loss_module)

    def prepare(self, module: nn.Module, optimizer: Optimizer, config: Config, precision: str) -> tuple[nn.Module, Optimizer]:
        """The module and optimizer as the loop drives them, once the optimizer exists (the scheduler comes after)."""
        return module, optimizer

    def prepare_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """After the scheduler is made: the optimizer the loop steps."""
        return self.accelerator.prepare(optimizer)

    def backward(self, module: nn.Module, batch: dict, scale: float, last: bool) -> float:
        """Forward and backward one micro-batch of an accumulation window (gradients synchronise at the `last`);
        returns its summed loss."""
        acc = self.accelerator
        with acc.no_sync(module) if not last else contextlib.nullcontext():
            with acc.autocast():
                loss_sum, _ = module(**batch)
            acc.backward(loss_sum * scale)
        return loss_sum.item()

    def step(self, optimizer: Optimizer, trainable: list, max_grad_norm: float) -> None:
        """The end of an accumulation window: clip, step, zero the gradients."""
        if max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def eval_module(self, module: nn.Module) -> nn.Module:
        """The loss module without a gradient-syncing wrapper: evaluation needs no gradient sync."""
        return module

    def checkpoint_state(self, model: nn.Module, optimizer: Optimizer, run_dir: Path, name: str) -> tuple[dict, dict | None, Path | None]:
        """(trainable weights, optimizer state, staged folder) for checkpoint.save_checkpoint; every process calls it."""
        weights, optimizer_state = checkpoint.gather_trainable(model, optimizer)
        return weights, optimizer_state, None

    def final_weights(self, model: nn.Module) -> dict | None:
        """The trainable weights, whole, where the main process's own parameters are not (None: they are)."""
        return None

    def load(self, path: Path, model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler) -> dict:
        """Restore a checkpoint into this process; returns its saved training state."""
        return checkpoint.load_checkpoint(path, model, optimizer, scheduler)

    def end(self, together: bool) -> None:
        """After the run, or a failure (`together`: every process ends here)."""


class DDP(SingleProcess):
    """Several processes, each with the whole model; accelerate's DistributedDataParallel averages the gradients."""

    name = "ddp"

    def eval_module(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return module.module if isinstance(module, DistributedDataParallel) else module


class FSDP(SingleProcess):
    """Every process holds a shard of each weight (FSDP2, one unit per decoder layer); checkpoints gather them."""

    name = "fsdp"

    def loading(self, device: str) -> tuple[str, bool]:
        """Only the first process reads the weights, into CPU memory; the others build the model on the meta device and
        receive their shards from it (`wrap`), so no process but the first holds a whole model, and no GPU ever does."""
        if self.accelerator.num_processes == 1:
            return device, False
        return ("cpu", False) if self.accelerator.is_main_process else (device, True)

    def wrap(self, loss_module: nn.Module, model: nn.Module) -> nn.Module:
        if self.accelerator.num_processes == 1:
            return shard_model(loss_module, model)
        whole = whole_weights(model) if self.accelerator.is_main_process else {}  # the loaded tensors, not copies
        shard_model(loss_module, model)  # replaces the parameters by shards (on the others: shards of nothing, on meta)
        fill_shards_from_first(model, whole, self.accelerator.device)
        return loss_module

    def final_weights(self, model: nn.Module) -> dict | None:
        return checkpoint.gather_weights(model)


class DeepSpeed(SingleProcess):
    """DeepSpeed's engine (ZeRO-2/3) wraps the loss module and its optimizer: it casts, clips, steps and saves shards."""

    name = "deepspeed"

    def __init__(self, accelerator: Accelerator | None = None):
        super().__init__(accelerator)
        self._engine: DeepSpeedEngine | None = None

    @property
    def engine(self) -> DeepSpeedEngine:
        assert self._engine is not None, "prepare() makes DeepSpeed's engine before anything steps or saves"
        return self._engine

    def accelerator_precision(self, config: Config, device: str) -> str:
        return "no"  # the engine casts the model itself (deepspeed.json), so nothing is autocast

    def zero3_loading(self, config: Config, precision: str) -> dict | None:
        return zero3_loading(config, precision)

    def wrap(self, loss_module: nn.Module, model: nn.Module) -> nn.Module:
        return loss_module  # the engine wraps it once the optimizer exists

    def prepare(self, module: nn.Module, optimizer: Optimizer, config: Config, precision: str) -> tuple[nn.Module, Optimizer]:
        # ZeRO takes over the optimizer's state and drops its empty param groups; the scheduler, made after, sets the
        # learning rate in those that are left
        self._engine = deepspeed_engine(module, optimizer, config, precision)
        return self._engine, optimizer

    def prepare_optimizer(self, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def backward(self, module: nn.Module, batch: dict, scale: float, last: bool) -> float:
        engine = self.engine
        engine.set_gradient_accumulation_boundary(last)  # the loop's windows, not a fixed count: an epoch's last is shorter
        loss_sum, _ = engine(**batch)
        engine.backward(loss_sum * scale, scale_wrt_gas=False)
        engine.step()  # at the boundary: clip, step the optimizer, zero the gradients; before it, only counts
        return loss_sum.item()

    def step(self, optimizer: Optimizer, trainable: list, max_grad_norm: float) -> None:
        pass  # the engine clipped and stepped at the window's last micro-batch

    def eval_module(self, module: nn.Module) -> nn.Module:
        return self.engine.module

    def checkpoint_state(self, model: nn.Module, optimizer: Optimizer, run_dir: Path, name: str) -> tuple[dict, dict | None, Path | None]:
        # every process writes its ZeRO shard; the main one adds the rest
        return checkpoint.gather_zero_weights(model), None, checkpoint.stage_zero_state(self.engine, run_dir, name)

    def final_weights(self, model: nn.Module) -> dict | None:
        return checkpoint.gather_zero_weights(model)

    def load(self, path: Path, model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler) -> dict:
        return checkpoint.load_checkpoint(path, model, optimizer, scheduler, self.engine)

    def end(self, together: bool) -> None:
        end_deepspeed(together)


STRATEGIES: dict[str, type[SingleProcess]] = {s.name: s for s in (SingleProcess, DDP, FSDP, DeepSpeed)}


def choose_strategy(config: Config, accelerator: Accelerator | None = None) -> SingleProcess:
    """The strategy object for distributed.strategy (none, ddp, fsdp, deepspeed)."""
    return STRATEGIES[config.distributed.strategy](accelerator)
