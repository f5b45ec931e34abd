"""What the peft backend's loop carries from setup to the end of a run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from trainer.backends.peft.state import TrainState
    from trainer.config import Config
    from trainer.data.batching import Batching, PairBatching
    from trainer.data.pipeline import PreparedData
    from trainer.methods.base import Method
    from trainer.objectives.base import Objective
    from trainer.rundir import MetricsLog
    from trainer.strategies import SingleProcess


@dataclass
class Run:
    """What the loop carries from setup to the end of a run."""

    config: Config
    run_dir: Path
    accelerator: Accelerator  # the device, the process rank, autocast, the reductions
    strategy: SingleProcess  # the distributed mode: wraps, steps, gathers and saves
    tokenizer: PreTrainedTokenizerBase  # saved beside the model
    model: nn.Module  # the peft-wrapped (or full) model
    loss_module: nn.Module  # the model behind the objective's loss module, as the strategy wrapped it
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer  # accelerate's wrapper around it, or DeepSpeed's
    scheduler: torch.optim.lr_scheduler.LRScheduler  # the learning-rate schedule, stepped once per optimizer step
    data: PreparedData
    objective: Objective  # what is learnt: the batching, the loss module and what a step logs
    method: Method  # how the model is adapted: whether there is an adapter to merge and save
    batching: Batching | PairBatching
    eval_batching: Batching | PairBatching  # the same, for the validation set (its own reference log-probs)
    state: TrainState  # where the run is; saved in every checkpoint
    total_steps: int
    metrics: MetricsLog | None  # the main process's; None in the others
    resumed_at_step: int | None  # the step of the checkpoint this process continued from; None in a run from the start
