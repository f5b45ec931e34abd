"""The Method interface: all that loading, saving and the plan ask of how a run trains the model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

    from trainer.config import Config
    from trainer.plan.params import Architecture, ParameterCount


class Method(Protocol):
    """One method of training.method; its module imports nothing heavy at the top (the plan asks it too)."""

    name: ClassVar[str]  # as training.method spells it
    has_adapter: ClassVar[bool]  # trains an adapter: saved as one, mergeable into the base, switched off for a reference
    trains_base_weights: ClassVar[bool]  # every base weight is trained (kept float32 on a CPU, gradients for all)
    flops_factor: ClassVar[int]  # FLOPs per parameter and processed token, forward and backward
    flops_rule: ClassVar[str]  # that factor in words, for the plan

    def load_options(self, device: str) -> dict[str, Any]:
        """from_pretrained's extra arguments for the base model (quantisation, device map)."""
        ...

    def places_model(self) -> bool:
        """Whether loading puts the model on its device itself (else it is moved there after loading)."""
        ...

    def adapt(self, model: PreTrainedModel, config: Config) -> nn.Module:
        """The loaded base model made trainable for this method (gradient checkpointing is already set up)."""
        ...

    def count_parameters(self, arch: Architecture, config: Config) -> ParameterCount:
        """The plan's parameter counts of the model as it trains."""
        ...

    def weight_bytes(self, arch: Architecture, bytes_per_weight: float) -> float:
        """The plan's bytes of the base weights in memory, at `bytes_per_weight` unless the method stores them otherwise."""
        ...

    def layer_input_bytes(self, bytes_per_weight: float) -> float:
        """Bytes per number of an adapted layer's input (what LoRA dropout keeps a copy of)."""
        ...

    def stored_weights(self, dtype: str) -> str:
        """How the plan names the base weights' precision, given the dtype they are loaded in."""
        ...
