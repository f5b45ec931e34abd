"""Memory of a training run, part by part, from the architecture, the config and the data's lengths.

The parts follow what PyTorch keeps alive at the peak of a step (after the forward pass, during the backward):

- weights at their dtype (NF4 for QLoRA's linear layers: 4 bits plus double-quantised block scales);
- adapters (float32, as peft keeps them), their gradients, and the optimizer's state per trainable parameter
  (AdamW: two moments at the parameter's dtype; 8-bit AdamW: 2 bytes; SGD with momentum: one);
- activations saved for the backward pass, per token and layer of a Llama-style decoder (see `per_token_layer`),
  at the configured micro-batch and the longest row, with LoRA dropout's copies of each adapted layer's input; with
  gradient checkpointing only each layer's input is kept, plus one layer's activations while it is recomputed;
- logits on the trained positions only (trainer's loss computes no others), with their float32 copies;
- a full fine-tune in mixed precision with float32 weights: the bf16/fp16 copies autocast makes of every weight;
- the process itself (Python, PyTorch, transformers, peft; on a GPU the CUDA context), a measured constant;
- on a CPU under glibc, the freed blocks its heap keeps (`allocator`), which resident memory counts too.

On a CPU, loading reads the checkpoint through a memory map whose pages count in the process's resident memory,
so the peak is the larger of loading (the file and the weights) and training.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypedDict

from trainer.config import Config
from trainer.methods import method_for
from trainer.plan.params import Architecture, ParameterCount

GIB = 1024**3
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit scale per 64 weights, a float32 scale per 256 scales
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "nf4": NF4_BYTES}
# resident memory of a trainer process with its libraries imported and nothing loaded, measured on this project's
# CPU machine (VmHWM 366 MB with torch 2.13, transformers and peft); the CUDA context is a commonly quoted figure
RUNTIME_BYTES = {"cpu": 0.40 * GIB, "cuda": 0.75 * GIB, "mps": 0.40 * GIB}
# glibc's malloc keeps freed blocks in its heap, and a step's activations, freed and allocated again in other sizes,
# leave holes the next ones do not fit, so the heap grows past what the process holds. Measured on the quickstart in
# fp32 (one epoch, glibc 2.36, mallinfo2 sampled every 0.1 s): at the peak of resident memory (5.29 GiB), 2.75 GiB
# of the heap was in use and 1.74 GiB free but kept, 0.61 of the 2.84 GiB of activations and logits planned for its
# longest batch (docs/benchmarks.md#plan-memory). The same share fits the bf16 run (3.32 GiB planned, 3.08 measured).
GLIBC_KEPT_PER_ACTIVATION_BYTE = 0.6
# MALLOC_MMAP_THRESHOLD_ at or under this sends every block of this size or more (a step's activations are MiBs
# each) to its own mapping, which is returned when freed: the heap then keeps little
RETURNED_ABOVE_BYTES = 1024**2
CPU_MATH_ATTENTION_ROWS = 160  # trainer.modeling.SHORT_ROWS_ON_CPU: up to this, CPU attention keeps the whole matrix


@dataclass(frozen=True)
class Shape:
    """What one micro-batch looks like at its largest."""

    batch: int
    length: int  # tokens per row of the longest batch
    trained_per_row: int  # tokens in the loss per row (the logits computed)


@dataclass(frozen=True)
class Precision:
    weights: str  # float32 | bfloat16 | float16 (the frozen base weights; nf4 is applied by method qlora)
    compute: str  # the autocast dtype, or float32 without mixed precision


class _MemoryDict(TypedDict):
    parts_bytes: dict[str, float]
    loading_bytes: float
    peak_bytes: float
    gradient_checkpointing: bool


class MemoryDict(_MemoryDict, total=False):  # one of the two: activations with checkpointing the other way round
    activations_without_checkpointing_bytes: float
    activations_with_checkpointing_bytes: float


@dataclass(frozen=True)
class Memory:
    parts: dict[str, float]  # bytes, in the order they are listed
    loading: float  # bytes at the peak of loading the model
    peak: float
    checkpointing: bool
    activations_other: float  # activations with gradient checkpointing the other way round, for comparison

    def to_dict(self) -> MemoryDict:
        out: MemoryDict = {"parts_bytes": self.parts, "loading_bytes": self.loading, "peak_bytes": self.peak,
                           "gradient_checkpointing": self.checkpointing}
        if self.checkpointing:
            out["activations_without_checkpointing_bytes"] = self.activations_other
        else:
            out["activations_with_checkpointing_bytes"] = self.activations_other
        return out


def precision_for(config: Config, device: str, native_bf16: bool) -> Precision:
    """The same choices as trainer.models.torch_dtype and mixed_precision, without importing torch."""
    t = config.training
    compute = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(t.precision)
    if compute is None:  # auto
        compute = "bfloat16" if native_bf16 else "float32"
    if config.model.dtype != "auto":
        weights = config.model.dtype
    elif native_bf16 and (device == "cuda" or not method_for(config).trains_base_weights) and compute == "bfloat16":
        weights = "bfloat16"
    else:
        weights = "float32"
    return Precision(weights, compute)


def per_token_layer(arch: Architecture, compute_bytes: float, attention_rows: int | None) -> float:
    """Bytes saved for the backward pass per token in one decoder layer (HF Llama, Qwen, Mistral have this shape).

    Two RMSNorms: each keeps its float32 input and its normalised output twice at the compute dtype. Attention:
    the rotated queries, keys and values repeated to every head, and its output before and after the reshape that
    feeds o_proj (5 x hidden). MLP: gate, SiLU(gate), up and their product (4 x intermediate). `attention_rows`:
    with PyTorch's math kernel (trainer uses it on a CPU for short rows) the softmax matrix too, heads x rows.
    """
    h, i = arch.hidden_size, arch.intermediate_size
    norms = 2 * (4 * h + 2 * compute_bytes * h)
    attention = compute_bytes * 5 * h
    mlp = compute_bytes * 4 * i
    if arch.experts:  # a mixture of experts: that MLP in each expert a token is routed to, with its copy of the token's input
        mlp = compute_bytes * (4 * i + h) * arch.experts_per_token + 4 * arch.experts  # and the router's float32 scores
    matrix = compute_bytes * arch.heads * attention_rows if attention_rows else 0
    return norms + attention + mlp + matrix


def dropout_per_token_layer(arch: Architecture, config: Config, input_bytes: float) -> float:
    """LoRA dropout keeps, per adapted layer, its own dropped-out copy of the layer's input and the mask (1 byte)."""
    t = config.training
    if not method_for(config).has_adapter or t.lora.dropout == 0:
        return 0.0
    from trainer.plan.params import adapted_layers

    return sum(x.in_features for x in adapted_layers(arch, t.lora.target_modules)) / arch.layers * (input_bytes + 1)


def activations(arch: Architecture, shape: Shape, compute_bytes: float, checkpointing: bool, math_attention: bool,
                dropout: float = 0.0) -> float:
    tokens = shape.batch * shape.length
    rows = shape.length if math_attention and not checkpointing else None
    layer = (per_token_layer(arch, compute_bytes, rows) + dropout) * tokens
    embeddings = compute_bytes * arch.hidden_size * tokens * 2  # the embedding output and the final norm's
    if checkpointing:  # each layer's input, plus one layer recomputed during the backward pass
        return compute_bytes * arch.hidden_size * tokens * arch.layers + layer + embeddings
    return layer * arch.layers + embeddings


def glibc_keeps_freed_blocks(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process's malloc is glibc's with its default mmap threshold (this environment's, which a run here
    inherits): then freed activations stay in the heap (see GLIBC_KEPT_PER_ACTIVATION_BYTE)."""
    environ = os.environ if environ is None else environ
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    threshold = environ.get("MALLOC_MMAP_THRESHOLD_", "").strip()
    return not (threshold.isdigit() and int(threshold) <= RETURNED_ABOVE_BYTES)


def estimate_memory(arch: Architecture, count: ParameterCount, config: Config, device: str, precision: Precision, shape: Shape,
                    checkpoint_file_bytes: float | None = None, checkpointing: bool | None = None,
                    heap_keeps_freed: bool = False) -> Memory:
    """`heap_keeps_freed`: the CPU run's malloc keeps freed blocks (glibc_keeps_freed_blocks()), an `allocator` part."""
    t = config.training
    checkpointing = t.gradient_checkpointing if checkpointing is None else checkpointing
    weight_bytes = DTYPE_BYTES[precision.weights]
    compute_bytes = DTYPE_BYTES[precision.compute]
    method = method_for(config)
    full = method.trains_base_weights
    weights = method.weight_bytes(arch, weight_bytes)
    trainable_bytes = weight_bytes if full else 4  # peft keeps adapters in float32
    adapters = 0 if full else count.trainable * 4
    gradients = count.trainable * trainable_bytes
    optimizer = count.trainable * {"adamw": 2 * trainable_bytes, "adamw_8bit": 2, "sgd": trainable_bytes}[t.optimizer]
    math_attention = device == "cpu" and shape.length <= CPU_MATH_ATTENTION_ROWS
    dropout = dropout_per_token_layer(arch, config, method.layer_input_bytes(weight_bytes))
    acts = activations(arch, shape, compute_bytes, checkpointing, math_attention, dropout)
    other = activations(arch, shape, compute_bytes, not checkpointing, math_attention, dropout)
    # the logits at the compute dtype, then at float32 for the loss, whose log-softmax output is kept for the backward
    # pass, where its float32 gradient arrives (the float32 copy itself is freed after the forward pass)
    logits = shape.batch * shape.trained_per_row * arch.vocab_size * (compute_bytes + 8)
    parts = {"weights": weights, "adapters": adapters, "gradients": gradients, "optimizer": optimizer,
             "activations": acts, "logits": logits}
    if full and precision.compute != precision.weights:  # autocast's low-precision copy of every weight, per step
        parts["autocast_weight_copies"] = arch.total * compute_bytes
    if device == "cpu" and heap_keeps_freed:
        parts["allocator"] = GLIBC_KEPT_PER_ACTIVATION_BYTE * (acts + logits)
    parts["runtime"] = RUNTIME_BYTES.get(device, RUNTIME_BYTES["cpu"])
    training = sum(parts.values())
    loading = parts["runtime"] + weights + ((checkpoint_file_bytes or 0) if device == "cpu" else 0)
    return Memory(parts, loading, max(training, loading), checkpointing, other)


def largest_batch(fits: Callable[[int], bool], batch: int) -> int:
    """The largest micro-batch of at most `batch` for which fits(b) holds (halving), or 0 if not even 1."""
    b = batch
    while b >= 1:
        if fits(b):
            return b
        b //= 2
    return 0
