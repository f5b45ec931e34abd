"""The validation loss: an objective's loss module over a split, per unit, the same in every process of a run.

The peft backend's loop evaluates with it, and the AutoTrain backend measures its results with it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator

    from trainer.data.batching import Batching, PairBatching


def evaluate(module: nn.Module, examples: Sequence[Any], accelerator: Accelerator, batching: Batching | PairBatching) -> float | None:
    """Mean loss per unit of `module` (a LossOnTrainedTokens per trained token, or a PreferenceLoss per pair; unwrapped)
    over `examples` (Tokenized, or TokenizedPair with a PairBatching); None without any.

    Every process of a run calls it and gets the same number."""
    if not examples:
        return None
    acc = accelerator
    module.eval()
    plan: list = batching.plan(examples, epoch=0)
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
