"""Time, money and data: the cost side of "should I fine-tune at all?".

- Time from this machine's measured throughput when an earlier run left one, else from FLOPs on each GPU of the
  table at its stated utilisation. FLOPs per processed token: 6 x parameters for full fine-tuning (forward 2,
  backward 4); 4 x parameters for LoRA (the backward pass still computes every layer's input gradient, but no weight
  gradient for frozen weights); gradient checkpointing adds a second forward pass (2 x parameters).
- Hosting: prompt tokens per request of the tuned model against the few-shot and retrieval prompts it replaces.
- Data: examples and tokens against OpenAI's guidance, and OpenAI's billed-token estimate for the same data.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

# OpenAI's fine-tuning guide: "at least 10 examples"; "clear improvements from fine-tuning on 50 to 100 training
# examples" (platform.openai.com/docs/guides/fine-tuning, "Example count recommendations")
OPENAI_MINIMUM = 10
OPENAI_CLEAR_GAINS = (50, 100)
# OpenAI cookbook, "Data preparation and analysis for chat model fine-tuning": the default-epochs rule and billing
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
MAX_TOKENS_PER_EXAMPLE = 16385


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    tflops: float
    bf16: bool
    price_per_hour: float


@dataclass(frozen=True)
class GpuTable:
    gpus: tuple[Gpu, ...]
    prices_taken: str
    currency: str
    utilisation: float


def load_gpus(path: str | None = None) -> GpuTable:
    text = Path(path).read_text(encoding="utf-8") if path else resources.files("trainer.plan").joinpath("gpus.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    gpus = tuple(Gpu(str(g["name"]), float(g["memory_gib"]), float(g["tflops"]), bool(g["bf16"]), float(g["price_per_hour"]))
                 for g in data["gpus"])
    return GpuTable(gpus, str(data["prices_taken"]), str(data.get("currency", "USD")), float(data.get("utilisation", 0.35)))


def flops_per_token(parameters: int, method: str, checkpointing: bool) -> tuple[float, str]:
    factor = 6 if method == "full" else 4
    why = "6 x parameters (full fine-tuning)" if method == "full" else "4 x parameters (LoRA: no weight gradients for frozen weights)"
    if checkpointing:
        factor += 2
        why += ", + 2 x parameters for the forward pass gradient checkpointing repeats"
    return factor * parameters, why


def openai_epochs(examples: int) -> int:
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // max(examples, 1))
    if examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // examples)
    return TARGET_EPOCHS


def openai_billed_tokens(lengths: list[int]) -> tuple[int, int]:
    """(epochs OpenAI would default to, tokens it would bill) for examples of these lengths (full conversations)."""
    epochs = openai_epochs(len(lengths))
    return epochs, epochs * sum(min(MAX_TOKENS_PER_EXAMPLE, n) for n in lengths)


def sufficiency(examples: int) -> str:
    if examples < OPENAI_MINIMUM:
        return f"too few: OpenAI asks for at least {OPENAI_MINIMUM} examples"
    if examples < OPENAI_CLEAR_GAINS[0]:
        return f"enough to start; OpenAI sees clear gains from {OPENAI_CLEAR_GAINS[0]}-{OPENAI_CLEAR_GAINS[1]} examples"
    return f"at or above the {OPENAI_CLEAR_GAINS[0]}-{OPENAI_CLEAR_GAINS[1]} examples where OpenAI sees clear gains"


def monthly_saving(tuned_tokens: float, baseline_tokens: float, requests: int, price_per_million: float) -> float:
    return (baseline_tokens - tuned_tokens) * requests / 1e6 * price_per_million
