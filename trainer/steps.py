"""How many optimizer steps a run takes: one arithmetic for the training loop and `trainer data`."""
from __future__ import annotations

import math

from trainer.config import Config
from trainer.config.sections import DistributedConfig


def steps_per_epoch(micro_batches: int, processes: int, accumulation: int) -> int:
    """Optimizer steps in an epoch of `micro_batches` shared out over `processes` (see trainer.backends.peft.loop.shard: every process
    gets the same whole number of them, the remainder is left out), `accumulation` micro-batches per step."""
    per_process = max(1, micro_batches // processes)
    return math.ceil(per_process / accumulation)


def total_steps(config: Config, per_epoch: int) -> int:
    """training.max_steps, else training.epochs of `per_epoch` steps (at least one step)."""
    t = config.training
    if t.max_steps:
        return t.max_steps
    assert t.epochs is not None  # rules.epochs_xor_max_steps: one of the two is set
    return max(1, math.ceil(t.epochs * per_epoch))


def planned_processes(d: DistributedConfig) -> int:
    """How many processes a run trains in: one, distributed.num_processes, or one per visible GPU."""
    if d.strategy == "none":
        return 1
    if d.num_processes:
        return d.num_processes
    import torch

    return max(1, torch.cuda.device_count())
