"""The validation loss: an objective's loss module over a split, per unit, the same in every process of a run.

The peft backend's loop evaluates with it, and the AutoTrain backend measures its results with it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator

    from trainer.data.batching import Batching, PairBatching


class EvaluationCut(Exception):
    """A stop cut the pass short: `done` of its `total` batches were run, and no loss comes of them."""

    def __init__(self, done: int, total: int):
        super().__init__(f"validation cut short at {done} of {total} batches")
        self.done, self.total = done, total


def evaluate(module: nn.Module, examples: Sequence[Any], accelerator: Accelerator, batching: Batching | PairBatching,
             stop: Callable[[], bool] | None = None) -> float | None:
    """Mean loss per unit of `module` (a LossOnTrainedTokens per trained token, or a PreferenceLoss per pair; unwrapped)
    over `examples` (Tokenized, or TokenizedPair with a PairBatching); None without any.

    Every process of a run calls it and gets the same number. `stop` is asked before each batch; when it says yes in
    any process, every process raises EvaluationCut at the same batch."""
    if not examples:
        return None
    acc = accelerator
    module.eval()
    plan: list = batching.plan(examples, epoch=0)
    mine = plan[acc.process_index :: acc.num_processes]
    total = torch.zeros(2, dtype=torch.float64, device=acc.device)
    try:
        with torch.no_grad():
            # every process runs as many batches (fsdp gathers each layer's weights together); a short share repeats one uncounted
            for i in range(math.ceil(len(plan) / acc.num_processes)):
                if stop is not None and _anywhere(stop(), acc):
                    raise EvaluationCut(min(i * acc.num_processes, len(plan)), len(plan))
                batch = mine[i] if i < len(mine) else plan[0]
                tensors = {k: v.to(acc.device) for k, v in batching.collate(batch).items()}
                with acc.autocast():
                    loss_sum, count = module(**tensors)
                if i < len(mine):
                    total += torch.stack([loss_sum.double(), count.double()])
        total = acc.reduce(total, "sum")
    finally:
        module.train()
    return float(total[0] / total[1]) if total[1] > 0 else None


def _anywhere(flag: bool, accelerator: Accelerator) -> bool:
    """Whether `flag` is set in any process: a signal reaches the processes of a run at different moments, so several
    processes sum theirs at every batch (one tiny all-reduce and a wait for the batch before it; one process does neither)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)
