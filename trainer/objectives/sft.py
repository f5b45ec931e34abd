"""Supervised fine-tuning: the summed cross-entropy of the trained tokens, per trained token.

Only the positions in the loss go through the LM head: on chat data most tokens are prompt, and their logits
(vocabulary-sized) would be most of the memory.
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import nn

from trainer.config import Config
from trainer.data.batching import Batching, trained_in
from trainer.data.tokenize import IGNORE
from trainer.modeling import attention_kernel_for, decoder_and_head


class LossOnTrainedTokens(nn.Module):
    """Summed cross-entropy over the trained positions only, and how many there were.

    It wraps the model so that distributed wrappers (DDP) see one forward call.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.decoder, self.head, self.choose_kernel = decoder_and_head(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with attention_kernel_for(input_ids) if self.choose_kernel else contextlib.nullcontext():
            hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state  # a KV cache only helps generation
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = self.head(hidden[:, :-1][keep])  # (trained tokens, vocab): the only logits computed
        loss_sum = nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss_sum, keep.sum()


class SFT:
    """Examples in, the answers' tokens learnt; the loss per trained token, nothing logged beside it."""

    name: ClassVar[str] = "sft"
    pairs: ClassVar[bool] = False
    samples: ClassVar[bool] = False
    unit: ClassVar[str] = "examples"
    needs_reference: ClassVar[bool] = False
    autotrain_trainer: ClassVar[str] = "sft"

    def __init__(self, config: Config):
        self.config = config

    def module(self, model: nn.Module) -> nn.Module:
        return LossOnTrainedTokens(model)

    def batching(self, config: Config, pad_id: int) -> Batching:
        return Batching.of(config, pad_id)

    def units(self, batch: dict) -> int:
        return trained_in(batch)

    def take_metrics(self, prefix: str = "") -> dict[str, float]:
        return {}
