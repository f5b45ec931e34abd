"""LoRA (and DoRA, its magnitude-and-direction variant): small trainable matrices beside frozen weights, through peft."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trainer.errors import UserError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

    from trainer.config import Config
    from trainer.plan.params import Architecture, ParameterCount


class LoRA:
    name: ClassVar[str] = "lora"
    has_adapter: ClassVar[bool] = True
    trains_base_weights: ClassVar[bool] = False
    flops_factor: ClassVar[int] = 4
    flops_rule: ClassVar[str] = "4 x parameters (LoRA: no weight gradients for frozen weights)"
    use_dora: ClassVar[bool] = False

    def load_options(self, device: str) -> dict[str, Any]:
        return {}

    def places_model(self) -> bool:
        return False

    def prepare(self, model: PreTrainedModel, config: Config) -> PreTrainedModel:
        """The frozen base made ready for an adapter: under gradient checkpointing, inputs that carry gradients."""
        if config.training.gradient_checkpointing:
            model.enable_input_require_grads()
        return model

    def adapt(self, model: PreTrainedModel, config: Config) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        from trainer.models import load_trainable_adapter

        t = config.training
        model = self.prepare(model, config)
        if config.model.adapter is not None:
            return load_trainable_adapter(model, config.model.adapter)
        targets = t.lora.target_modules
        lora = LoraConfig(
            r=t.lora.r,
            lora_alpha=t.lora.alpha,
            lora_dropout=t.lora.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            use_dora=self.use_dora,
            task_type="CAUSAL_LM",
        )
        try:
            return get_peft_model(model, lora)
        except ValueError as exc:  # peft names the target modules it could not find
            raise UserError(f"training.lora.target_modules: {exc}") from None

    def count_parameters(self, arch: Architecture, config: Config) -> ParameterCount:
        from trainer.plan.params import ParameterCount, adapted_layers

        t = config.training
        layers = adapted_layers(arch, t.lora.target_modules)
        if not layers:
            raise UserError(f"training.lora.target_modules: none of {list(t.lora.target_modules)} is a linear layer of this "
                            f"model; its layers are named like {sorted({x.name.rsplit('.', 1)[-1] for x in arch.linears})}.")
        added = sum(t.lora.r * (x.in_features + x.out_features) for x in layers)
        if self.use_dora:
            added += sum(x.out_features for x in layers)  # the magnitude vector
        return ParameterCount(arch.total + added, added, arch.total, len(layers))

    def weight_bytes(self, arch: Architecture, bytes_per_weight: float) -> float:
        return arch.total * bytes_per_weight

    def layer_input_bytes(self, bytes_per_weight: float) -> float:
        return bytes_per_weight

    def stored_weights(self, dtype: str) -> str:
        return dtype


class DoRA(LoRA):
    """LoRA with each adapted weight split into a magnitude (a trained vector) and a direction."""

    name: ClassVar[str] = "dora"
    use_dora: ClassVar[bool] = True
