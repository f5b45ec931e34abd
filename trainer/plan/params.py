"""Parameter counts from the model's architecture alone: its config (a Hub config.json, a local folder, or a GGUF
header), built on PyTorch's meta device, which allocates no memory and reads no weights.

LoRA adds r x (in + out) parameters to every adapted linear layer (DoRA also a magnitude vector of `out`). Which
layers are adapted follows peft's rules: 'all-linear' is every nn.Linear except the output layer; a list of names
matches a layer whose dotted name is the name or ends in '.' + the name.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from trainer.config.sections import ModelConfig
from trainer.errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

ModelSection = ModelConfig  # config.model


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Architecture:
    """What the plan needs to know about a model, read from its config and its meta-device build."""

    model_type: str
    total: int  # every parameter, tied ones once
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    linears: tuple[Linear, ...] = field(repr=False)  # every nn.Linear in the decoder (not the output layer)
    output_layer: Linear | None = field(repr=False)  # None when tied to the embeddings
    embedding_params: int = 0  # the input embeddings (and the output layer when it is not tied)
    experts: int = 0  # a mixture of experts (gpt-oss: 32 in each layer), 0 for a dense model
    experts_per_token: int = 0  # how many of them each token goes through (gpt-oss: 4)
    expert_params: int = 0  # the parameters of every expert of every layer (gpt-oss: 19.1 of its 20.9 billion)

    @property
    def linear_params(self) -> int:
        return sum(x.in_features * x.out_features for x in self.linears)

    @property
    def active(self) -> int:
        """The parameters one token goes through: all of a dense model's; a mixture of experts' but the experts it is not
        routed to (gpt-oss-20b: 4.19 billion, 3.61 without the input embeddings, which are looked up, not multiplied:
        the "3.6B active" of its model card)."""
        if not self.experts:
            return self.total
        return self.total - self.expert_params * (self.experts - self.experts_per_token) // self.experts


def read_model_config(m: ModelSection) -> PretrainedConfig:
    """The transformers config (a PretrainedConfig) of `m` (config.model): from a GGUF file's header, a local folder, or a Hub config.json."""
    from transformers import AutoConfig

    path = Path(os.path.expanduser(m.name_or_path))
    try:
        if path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise UserError(f"model.name_or_path: no GGUF file at {m.name_or_path!r}.")
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        source = str(path) if path.exists() else m.name_or_path
        return AutoConfig.from_pretrained(source, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except UserError:
        raise
    except Exception as exc:  # OSError, ValueError, HTTP errors ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model.name_or_path: could not read the model's config of {m.name_or_path!r}: {first}. "
                        "The plan needs only config.json (or the GGUF header); if the Hub is unreachable, point "
                        "model.name_or_path at a local folder or .gguf file.") from None


def architecture(model_config: PretrainedConfig) -> Architecture:
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    linears = tuple(Linear(name, mod.in_features, mod.out_features) for name, mod in model.named_modules()
                    if isinstance(mod, nn.Linear) and mod is not output)
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = text.num_attention_heads
    hidden = text.hidden_size
    embedding = model.get_input_embeddings().weight.numel() + (0 if tied or output is None else output.weight.numel())
    experts = getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None) or 0
    routed = getattr(text, "num_experts_per_tok", None) or getattr(text, "experts_per_token", None) or 0
    # experts are kept as one 3-D parameter per projection (gpt-oss) or as modules of their own (Mixtral): in `experts`
    expert_params = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name) if experts and routed else 0
    return Architecture(
        model_type=text.model_type, total=sum(p.numel() for p in model.parameters()), hidden_size=hidden,
        intermediate_size=getattr(text, "intermediate_size", 4 * hidden), layers=text.num_hidden_layers, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or hidden // heads, vocab_size=text.vocab_size, linears=linears,
        output_layer=None if tied or output is None else Linear("lm_head", output.in_features, output.out_features),
        embedding_params=embedding, experts=experts if expert_params else 0, experts_per_token=routed if expert_params else 0,
        expert_params=expert_params,
    )


def adapted_layers(arch: Architecture, targets: str | Sequence[str]) -> list[Linear]:
    if targets == "all-linear":
        return list(arch.linears)
    names = list(targets)
    return [x for x in arch.linears if any(x.name == t or x.name.endswith("." + t) for t in names)]


class ParameterDict(TypedDict):
    total: int
    trainable: int
    base: int
    adapted_layers: int


@dataclass(frozen=True)
class ParameterCount:
    total: int  # of the model as it trains (adapters included)
    trainable: int
    base: int  # of the model before adapters
    adapted_layers: int  # linear layers with an adapter (0 for full fine-tuning)

    def to_dict(self) -> ParameterDict:
        return {"total": self.total, "trainable": self.trainable, "base": self.base, "adapted_layers": self.adapted_layers}
