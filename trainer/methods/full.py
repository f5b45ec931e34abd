"""Full fine-tuning: every weight trained; no adapter to save or merge."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

    from trainer.config import Config
    from trainer.plan.params import Architecture, ParameterCount


class Full:
    name: ClassVar[str] = "full"
    has_adapter: ClassVar[bool] = False
    trains_base_weights: ClassVar[bool] = True
    flops_factor: ClassVar[int] = 6
    flops_rule: ClassVar[str] = "6 x parameters (full fine-tuning)"

    def load_options(self, device: str) -> dict[str, Any]:
        return {}

    def places_model(self) -> bool:
        return False

    def adapt(self, model: PreTrainedModel, config: Config) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def count_parameters(self, arch: Architecture, config: Config) -> ParameterCount:
        from trainer.plan.params import ParameterCount

        return ParameterCount(arch.total, arch.total, arch.total, 0)

    def weight_bytes(self, arch: Architecture, bytes_per_weight: float) -> float:
        return arch.total * bytes_per_weight

    def layer_input_bytes(self, bytes_per_weight: float) -> float:
        return bytes_per_weight

    def stored_weights(self, dtype: str) -> str:
        return dtype
