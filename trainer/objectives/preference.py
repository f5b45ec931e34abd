"""The preference objectives, dpo and orpo: pairs in, the loss per pair, rewards logged; and dpo's reference pass.

The loss of an optimizer step is the loss sum over its accumulation window divided by the window's units: pairs
here (trained tokens for sft).

Preference batches hold each pair's two sides in one forward pass: the chosen answers in the first half of
the rows, the rejected ones in the second, padded together. As in sft, only the positions of answer tokens
go through the LM head. The reference model of dpo is the model the run starts from; its log-probabilities
are computed once, before the first step (no second copy of the model is kept, not even for full
fine-tuning: one forward pass over the pairs and 8 bytes a pair), and kept in the run directory for a resume.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from trainer.config import Config
from trainer.data.batching import PairBatching
from trainer.data.preference import TokenizedPair
from trainer.data.tokenize import IGNORE
from trainer.modeling import attention_kernel_for, decoder_and_head
from trainer.objectives import objective_for

if TYPE_CHECKING:
    from accelerate import Accelerator

REFERENCE_FILE = "reference_logps.pt"

PairLosses = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (loss per pair, chosen reward, rejected reward)


def sequence_logps(decoder: nn.Module, head: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   attention_mask: torch.Tensor, choose_kernel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed log-prob of each row's trained tokens, their count per row, the tokens' log-probs), with logits
    computed at the trained positions only."""
    with attention_kernel_for(input_ids) if choose_kernel else contextlib.nullcontext():
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, targets[keep].unsqueeze(1)).squeeze(1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    return sums, keep.sum(1), token_logps


class PreferenceLoss(nn.Module):
    """DPO (sigmoid or IPO, with an optional SFT term) or ORPO on a batch of pairs; forward gives (loss sum, pairs).

    Each forward also adds its pairs' statistics to `totals` (rewards, margins, accuracies, log-probs), which
    the objective turns into the logged means and clears."""

    STATS = ("pairs", "reward_chosen", "reward_rejected", "reward_accuracy", "logps_chosen", "logps_rejected")

    def __init__(self, model: nn.Module, config: Config):
        super().__init__()
        self.model = model
        self.decoder, self.head, self.choose_kernel = decoder_and_head(model)
        objective = objective_for(config)
        if not isinstance(objective, Preference):
            raise ValueError(f"{objective.name} is not a preference objective")
        self.pair_losses = objective.pair_losses  # the objective's loss per pair, from the pair's log-probs
        self.last_rewards: tuple[torch.Tensor, torch.Tensor] | None = None
        self.totals = {"train": torch.zeros(len(self.STATS), dtype=torch.float64), "eval": torch.zeros(len(self.STATS), dtype=torch.float64)}

    def logps(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return sequence_logps(self.decoder, self.head, input_ids, labels, attention_mask, self.choose_kernel)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                reference: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logps, counts, token_logps = self.logps(input_ids, labels, attention_mask)
        pairs = input_ids.shape[0] // 2
        chosen, rejected = logps[:pairs], logps[pairs:]
        n_chosen, n_rejected = counts[:pairs], counts[pairs:]
        losses, reward_c, reward_r = self.pair_losses(chosen, rejected, n_chosen, n_rejected, token_logps, counts, reference)
        self.last_rewards = (reward_c.detach(), reward_r.detach())  # per pair, for the evaluation's intervals
        with torch.no_grad():
            stats = torch.stack([torch.tensor(float(pairs), dtype=torch.float64), reward_c.double().sum(), reward_r.double().sum(),
                                 (reward_c > reward_r).double().sum(), chosen.double().sum(), rejected.double().sum()])
            mode = "train" if self.training else "eval"
            self.totals[mode] = self.totals[mode] + stats.cpu()
        return losses.sum(), torch.tensor(pairs, device=input_ids.device)


def _chosen_nll(token_logps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The mean NLL over every chosen answer token of the batch, given to each pair (a per-batch mean, as TRL's)."""
    pairs = counts.shape[0] // 2
    chosen_tokens = int(counts[:pairs].sum())
    nll = -token_logps[:chosen_tokens].sum() / max(chosen_tokens, 1)  # the chosen rows come first, so do their tokens
    return nll.expand(pairs)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class Preference:
    """Pairs in, the preference loss per pair; rewards, margin, accuracy and log-probs logged. DPO and ORPO say
    how a pair's loss and rewards come from its log-probs (pair_losses); the rest is theirs in common."""

    name: ClassVar[str] = "preference"
    pairs: ClassVar[bool] = True
    samples: ClassVar[bool] = False
    unit: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = False
    autotrain_trainer: ClassVar[str] = ""

    def __init__(self, config: Config):
        self.config = config
        self.loss: PreferenceLoss | None = None

    def pair_losses(self, chosen: torch.Tensor, rejected: torch.Tensor, n_chosen: torch.Tensor, n_rejected: torch.Tensor,
                    token_logps: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None) -> PairLosses:
        """Each pair's loss and the rewards of its two sides, from their summed log-probs (policy, and reference if any)."""
        raise NotImplementedError

    def module(self, model: nn.Module) -> nn.Module:
        # no dropout (TRL's DPOTrainer default too): the rewards compare the policy with reference log-probs computed
        # without it, and an adapter trained with lora.dropout would otherwise start away from its own reference
        for layer in model.modules():
            if isinstance(layer, nn.Dropout):
                layer.p = 0.0
        self.loss = PreferenceLoss(model, self.config)
        return self.loss

    def batching(self, config: Config, pad_id: int) -> PairBatching:
        return PairBatching(config.training.batch_size, config.training.seed, pad_id)

    def units(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0] // 2)

    def take_metrics(self, prefix: str = "") -> dict[str, float]:
        """The means over the pairs trained on (or, with prefix eval_, evaluated) since the last call, then cleared."""
        mode = "eval" if prefix else "train"
        if self.loss is None or not float(self.loss.totals[mode][0]):
            return {}
        n, chosen, rejected, right, logps_c, logps_r = (float(v) for v in self.loss.totals[mode])
        self.loss.totals[mode] = torch.zeros_like(self.loss.totals[mode])
        return {f"{prefix}reward_margin": round((chosen - rejected) / n, 6), f"{prefix}reward_accuracy": round(right / n, 6),
                f"{prefix}reward_chosen": round(chosen / n, 6), f"{prefix}reward_rejected": round(rejected / n, 6),
                f"{prefix}logps_chosen": round(logps_c / n, 4), f"{prefix}logps_rejected": round(logps_r / n, 4)}


class DPO(Preference):
    """Direct preference optimisation (sigmoid or IPO, with an optional SFT term) against the start model's log-probs,
    computed once before the first step (a reference pass)."""

    name: ClassVar[str] = "dpo"
    needs_reference: ClassVar[bool] = True
    autotrain_trainer: ClassVar[str] = "dpo"

    def __init__(self, config: Config):
        super().__init__(config)
        d = config.training.dpo
        self.beta, self.dpo_loss, self.sft_weight = d.beta, d.loss, d.sft_weight

    def pair_losses(self, chosen: torch.Tensor, rejected: torch.Tensor, n_chosen: torch.Tensor, n_rejected: torch.Tensor,
                    token_logps: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None) -> PairLosses:
        if reference is None:
            raise ValueError("dpo needs the reference model's log-probabilities in the batch")
        pairs = chosen.shape[0]
        chosen_ratio, rejected_ratio = chosen - reference[:pairs], rejected - reference[pairs:]
        if self.dpo_loss == "ipo":  # the IPO paper's squared loss, on per-token averages (as TRL computes it)
            delta = chosen_ratio / n_chosen.clamp(min=1) - rejected_ratio / n_rejected.clamp(min=1)
            losses = (delta - 1 / (2 * self.beta)) ** 2
        else:
            losses = -nn.functional.logsigmoid(self.beta * (chosen_ratio - rejected_ratio))
        if self.sft_weight:
            losses = losses + self.sft_weight * _chosen_nll(token_logps, counts)
        return losses, (self.beta * chosen_ratio).detach(), (self.beta * rejected_ratio).detach()


class ORPO(Preference):
    """Odds-ratio preference optimisation: the chosen answer's NLL plus a log odds-ratio term; no reference model."""

    name: ClassVar[str] = "orpo"
    autotrain_trainer: ClassVar[str] = "orpo"

    def __init__(self, config: Config):
        super().__init__(config)
        self.orpo_weight = config.training.orpo.weight

    def pair_losses(self, chosen: torch.Tensor, rejected: torch.Tensor, n_chosen: torch.Tensor, n_rejected: torch.Tensor,
                    token_logps: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None) -> PairLosses:
        # the ORPO paper's loss: NLL of the chosen answer minus lambda * log sigmoid(log odds ratio), with per-token
        # average log-probs; log(1 - p) from log p without cancellation (log1p below -ln 2, log(-expm1) above)
        mean_c, mean_r = chosen / n_chosen.clamp(min=1), rejected / n_rejected.clamp(min=1)
        log_odds = (mean_c - mean_r) - (_log1mexp(mean_c) - _log1mexp(mean_r))
        losses = _chosen_nll(token_logps, counts) - self.orpo_weight * nn.functional.logsigmoid(log_odds)
        return losses, (self.orpo_weight * mean_c).detach(), (self.orpo_weight * mean_r).detach()


def reference_logps(loss: PreferenceLoss, model: nn.Module, batching: PairBatching, pairs: Sequence[TokenizedPair],
                    accelerator: Accelerator, fresh_adapter: bool) -> torch.Tensor:
    """(pairs, 2) summed log-probs of each pair's chosen and rejected answer under the model as the run starts.

    A new adapter starts at zero, so the model with its adapter switched off is that model (and is also what a
    resume would compute); an adapter trained before (model.adapter) or full fine-tuning is used as it is, once,
    before any step. Either way no second copy of the weights is kept."""
    out = torch.zeros((len(pairs), 2), dtype=torch.float32)
    batching = replace(batching, reference=None)
    switch = model.disable_adapter() if fresh_adapter and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    was_training = loss.training
    loss.eval()
    with torch.no_grad(), switch:
        for batch in batching.plan(pairs, 0):
            tensors = {k: v.to(accelerator.device) for k, v in batching.collate(batch).items()}
            with accelerator.autocast():
                sums, _, _ = loss.logps(**tensors)
            half = len(batch)
            index = torch.tensor([p.index for p in batch])
            out[index, 0], out[index, 1] = sums[:half].float().cpu(), sums[half:].float().cpu()
    loss.train(was_training)
    return out


def load_or_compute_reference(run_dir: Path, loss: PreferenceLoss, model: nn.Module, batching: PairBatching,
                              splits: Mapping[str, Sequence[Any]], accelerator: Accelerator, fresh_adapter: bool) -> dict[str, torch.Tensor]:
    """The reference log-probs of every split: computed at the start of a run and kept in the run directory, so
    that a resume (whose model has moved on) uses the same ones."""
    path = run_dir / REFERENCE_FILE
    if path.exists():
        saved = torch.load(path)
        if all(name in saved and saved[name].shape[0] == len(pairs) for name, pairs in splits.items()):
            return saved
    found = {name: reference_logps(loss, model, batching, pairs, accelerator, fresh_adapter) for name, pairs in splits.items()}
    if accelerator.is_main_process:
        tmp = path.with_suffix(".partial")
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(found, tmp)
        tmp.replace(path)
    return found
