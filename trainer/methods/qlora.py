"""QLoRA: LoRA on a base model quantised to 4-bit NF4 by bitsandbytes (CUDA only)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trainer.methods.lora import LoRA

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from trainer.config import Config
    from trainer.plan.params import Architecture


class QLoRA(LoRA):
    name: ClassVar[str] = "qlora"

    def load_options(self, device: str) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
        return {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}

    def places_model(self) -> bool:
        return True  # the device map puts the quantised weights on the GPU

    def prepare(self, model: PreTrainedModel, config: Config) -> PreTrainedModel:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.training.gradient_checkpointing)

    def weight_bytes(self, arch: Architecture, bytes_per_weight: float) -> float:
        from trainer.plan.memory import DTYPE_BYTES, NF4_BYTES

        quantised = arch.linear_params
        return quantised * NF4_BYTES + (arch.total - quantised) * DTYPE_BYTES["bfloat16"]

    def layer_input_bytes(self, bytes_per_weight: float) -> float:
        from trainer.plan.memory import DTYPE_BYTES

        return DTYPE_BYTES["bfloat16"]  # the 4-bit weights compute in bfloat16

    def stored_weights(self, dtype: str) -> str:
        return "nf4"
