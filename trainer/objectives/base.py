"""The Objective interface: all that the recipe, the loop, the data build and evaluation ask of what a run learns."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

if TYPE_CHECKING:
    from torch import nn

    from trainer.config import Config
    from trainer.data.batching import Batching, PairBatching


class Objective(Protocol):
    """One objective of training.objective, built from the config at setup and asked, never compared by name."""

    name: ClassVar[str]  # as training.objective spells it
    pairs: ClassVar[bool]  # learns from preference pairs (the data build reads pairs; eval measures the preference)
    samples: ClassVar[bool]  # learns from answers the model samples while it trains (grpo): trainer/reinforcement/'s loop
    unit: ClassVar[str]  # what one training item is called in messages: "examples" or "pairs"
    autotrain_trainer: ClassVar[str]  # the AutoTrain trainer that runs it (its llm-<trainer> task)

    @property
    def needs_reference(self) -> bool:
        """Whether the loss needs the start model's log-probs: dpo's, computed once before the first step (recipe);
        grpo's with beta > 0, of each batch of sampled answers. A class attribute where no setting changes it."""
        ...

    def module(self, model: nn.Module) -> nn.Module:
        """The module around `model` whose forward gives (loss sum, units) of a collated batch."""
        ...

    def batching(self, config: Config, pad_id: int) -> Batching | PairBatching:
        """How its data becomes micro-batches and tensors."""
        ...

    def units(self, batch: dict) -> int:
        """What a step's loss is divided by, counted in one collated batch: trained tokens, or pairs."""
        ...

    def take_metrics(self, prefix: str = "") -> dict[str, float]:
        """What it logs beside the loss since the last call (prefix eval_: of the evaluation), then cleared."""
        ...


ObjectiveClass = Callable[["Config"], Objective]  # a registered objective class: built from the config
