"""What the losses need of a causal LM: its decoder and LM head apart, and the attention kernel for short rows on a CPU.

Both the objectives' loss modules and evaluation use these, so they live apart from either.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

SHORT_ROWS_ON_CPU = 160


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module, bool]:
    """The model's decoder and LM head (under a peft wrapper too), and whether the loss may choose the attention kernel:
    not under gradient checkpointing, which recomputes the forward pass during backward, outside any choice made here."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpointing = "is_activation_checkpointing" if hasattr(type(causal_lm), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return causal_lm.get_decoder(), causal_lm.get_output_embeddings(), not getattr(causal_lm, checkpointing, False)


def attention_kernel_for(input_ids: torch.Tensor) -> contextlib.AbstractContextManager:
    """On CPU, PyTorch's plain (math) attention kernel for rows of up to SHORT_ROWS_ON_CPU tokens, its flash kernel above.

    The CPU flash kernel's backward is slow on short rows: forward + backward of one SmolLM2 layer's attention
    (4 rows, bf16, 2 cores) took 11.1 ms against the math kernel's 6.4 ms at 141 tokens; they are even near 230
    tokens and flash is ahead from there (58 against 98 ms at 512). The math kernel keeps the whole attention
    matrix, so the limit stays below the even point: a recipe epoch ran about 6% faster than with flash throughout,
    at the same peak memory. The kernel chosen in the forward pass also does the backward.
    """
    if input_ids.device.type != "cpu" or input_ids.shape[-1] > SHORT_ROWS_ON_CPU:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
