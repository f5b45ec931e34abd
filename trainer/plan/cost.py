"""Time, money and data: the cost side of "should I fine-tune at all?".

- Time from this machine's measured throughput when an earlier run left one, else from FLOPs on each GPU of the
  table at its stated utilisation. FLOPs per processed token: 6 x parameters for full fine-tuning (forward 2,
  backward 4); 4 x parameters for LoRA (the backward pass still computes every layer's input gradient, but no weight
  gradient for frozen weights); gradient checkpointing adds a second forward pass (2 x parameters).
- Hosting: prompt tokens per request of the tuned model against the few-shot and retrieval prompts it replaces.
- Data: examples and tokens against OpenAI's guidance, and OpenAI's billed-token estimate for the same data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from trainer.throughput import KeyParts, key_parts

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
    skypilot: str  # the accelerator's name in SkyPilot's catalog (`sky show-gpus`), for `trainer launch --to skypilot`


@dataclass(frozen=True)
class GpuTable:
    gpus: tuple[Gpu, ...]
    prices_taken: str
    currency: str
    utilisation: float


def load_gpus(path: str | None = None) -> GpuTable:
    text = Path(path).read_text(encoding="utf-8") if path else resources.files("trainer.plan").joinpath("gpus.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    gpus = tuple(Gpu(str(g["name"]), float(g["memory_gib"]), float(g["tflops"]), bool(g["bf16"]), float(g["price_per_hour"]),
                     str(g.get("skypilot", str(g["name"]).replace(" ", ""))))  # a table of one's own may leave it out
                 for g in data["gpus"])
    return GpuTable(gpus, str(data["prices_taken"]), str(data.get("currency", "USD")), float(data.get("utilisation", 0.35)))


def across_gpus(hours: float, cost: float, gpus: int) -> tuple[float, float]:
    """One GPU's hours and cost of a run, on `gpus` GPUs (nodes x GPUs per node) training together: the same tokens
    processed, shared out. Scaling taken as perfect, so the cost stays that of the GPU-hours: the gradients' exchange
    between machines (not modelled; it depends on the network) makes a real run longer and dearer."""
    return hours / gpus, cost


def flops_per_token(parameters: int, method: str, checkpointing: bool) -> tuple[float, str]:
    from trainer.methods import get_method

    trains = get_method(method)
    factor, why = trains.flops_factor, trains.flops_rule
    if checkpointing:
        factor += 2
        why += ", + 2 x parameters for the forward pass gradient checkpointing repeats"
    return factor * parameters, why


@dataclass(frozen=True)
class TimeHere:
    """A run's time on this machine, from what earlier runs measured here (trainer.throughput)."""
    training_seconds: float
    training_from: str
    overhead_seconds: float | None  # loading the model and the data, saving: everything but the training loop
    evaluation_seconds: float | None  # the evaluation after training, where the config asks for one

    @property
    def total_seconds(self) -> float:
        return self.training_seconds + (self.overhead_seconds or 0.0) + (self.evaluation_seconds or 0.0)


def time_here(table: dict[str, float], key: str, trained_tokens: float, base: int, evaluation: bool) -> TimeHere | None:
    """Training time from the throughput earlier runs of this configuration measured here (`table`:
    trainer.throughput.estimates). Without one, from the nearest measured configuration of the same model, method,
    device and length: first the same gradient checkpointing, then the nearest micro-batch (an older trainer's rate,
    whose micro-batch is not known, last). Its rate is used as it is across micro-batches (a GPU processes more tokens
    per second in larger ones, so the plan says which it was) and scaled by FLOPs per token across checkpointing (4 or
    6 x parameters for LoRA): measured on this CPU, that came within 24% (bench/plan_vs_measured.py). Not across
    methods: LoRA's throughput scaled to full fine-tuning by FLOPs was 2.8 times the measured time, so another method
    is "not known". Plus the loading and saving time, and the evaluation after training, that runs of this
    configuration (or else of the nearest) took."""
    want = key_parts(key)
    flops, _ = flops_per_token(base, want.method, want.checkpointing)
    measured = sorted((k for k in table if not k.endswith("_seconds") and key_parts(k)[:4] == want[:4]),
                      key=lambda k: _distance(key_parts(k), want))
    if not measured or not table[measured[0]]:
        return None
    near = key_parts(measured[0])
    rate = table[measured[0]] * flops_per_token(base, near.method, near.checkpointing)[0] / flops

    def part(name: str) -> float | None:
        return next((table[f"{k}|{name}_seconds"] for k in [key, *measured] if f"{k}|{name}_seconds" in table), None)

    return TimeHere(trained_tokens / rate, _source(near, want), part("overhead"), part("evaluation") if evaluation else None)


def _distance(parts: KeyParts, want: KeyParts) -> tuple[bool, float]:
    """How far a measured configuration is from the wanted one: checkpointing first, then the micro-batch's ratio."""
    batch = (0.0 if parts.batch == want.batch else
             abs(math.log2(parts.batch / want.batch)) if parts.batch and want.batch else math.inf)
    return parts.checkpointing != want.checkpointing, batch


def _source(near: KeyParts, want: KeyParts) -> str:
    if near == want:
        return "the throughput earlier runs of this model, method, length and micro-batch measured here"
    scaled = "scaled by FLOPs per token from " if near.checkpointing != want.checkpointing else ""
    batch = ("" if near.batch == want.batch else f" at micro-batch {near.batch}" if near.batch
             else " (recorded by an older trainer, at a micro-batch it did not keep)")
    return (f"{scaled}the throughput of a {near.method}{' + gradient checkpointing' if near.checkpointing else ''} "
            f"run of this model here{batch}")


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
