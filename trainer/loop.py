"""Not the loop (that is trainer/backends/peft/loop.py): the names trainer/backends/autotrain.py still imports from
here, until that module imports them from their homes. New code imports them from those."""
from trainer.data.batching import Batching
from trainer.evaluation.loss import evaluate
from trainer.objectives.sft import LossOnTrainedTokens

__all__ = ["Batching", "LossOnTrainedTokens", "evaluate"]
