"""The grpo objective (group relative policy optimisation): the loss over a batch of sampled answers, and the
group-relative advantages of their rewards. TRL 1.16's GRPOTrainer is the reference (tests/test_grpo_loss.py).

An answer's advantage is its reward (summed over the graders) minus the mean reward of its group (the answers
to the same prompt), divided by the group's or the batch's standard deviation, or by nothing (scale_rewards).
Each answer token's loss is PPO's clipped surrogate of the ratio r = p_policy / p_old with that advantage, plus
beta times the k3 estimate of KL(policy || reference), exp(ref - logp) - (ref - logp) - 1, weighted by r as
TRL does by default (use_bias_correction_kl: the unbiased KL gradient once the samples are off-policy). The log-
probabilities are those of the temperature's distribution the answers were sampled from. As in sft, only the
answer positions go through the LM head.

The loop's loss of a step is the loss sum over its accumulation window divided by the window's units, so each
aggregation (loss_type) is a choice of units; with the micro-batches of a window of equal size this is TRL's:
  dapo     sum of the token losses / answer tokens of the window
  bnpo     per micro-batch, sum / its answer tokens; then the mean over micro-batches (a unit is a micro-batch)
  grpo     per answer, sum / its tokens; then the mean over the answers of the window
  dr_grpo  sum of the token losses / (answers of the window x max_completion_length)

What fits the Objective interface is here; what GRPO needs beyond it is the loop's, trainer/reinforcement/ (the peft
backend runs it for objectives that sample). What the loop does, as it was specified:
  - sampling: for each prompt of a batch (batch_size counts prompts: unit "prompts"), num_generations answers of
    at most max_completion_length tokens at temperature and top_p, from the policy as it is when the batch is
    drawn, kept as token ids (re-tokenised text can differ); answers stop at EOS, later positions masked out.
    A batch row is the left-padded prompt and the right-padded answer: input_ids, attention_mask (the prompt's
    and the answer's masks), completion_mask, and the position_ids generation used (left padding shifts them;
    TRL's loss passes none, so it scores a left-padded row at other positions than it sampled it at, and the
    comparison with TRL passes none either).
  - grading: the rewards of each answer, summed over the graders (NaN where none could score it), then
    `GRPO.advantages` over the whole batch at once: groups are num_generations consecutive answers, and batch
    scaling needs every group (across processes too). Dropout off, as for dpo: r compares the policy with
    log-probs computed without it.
  - old log-probs: with num_iterations > 1, the policy's per-token log-probs of the answers right after sampling
    (no grad, `GRPOLoss.logps`), reused for the num_iterations passes over the batch; with 1, none (the loss then
    uses the detached current ones: r = 1, clipping inactive, the gradient of the plain policy gradient).
  - a reference pass, when beta > 0 (`needs_reference`): the start model's per-token log-probs of every sampled
    answer (the model with a fresh adapter switched off, as dpo's reference), once per batch of samples, unlike
    dpo's single pass before the first step.
  - a batching that collates those rows (the loop's count of trained tokens, `trained_in`, reads `labels`; here
    the answer tokens are completion_mask's), and evaluation: what a grpo run's validation measures (the mean reward
    of answers to held-out prompts, say) is for the loop and the graders to decide.
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import nn

from trainer.config import Config
from trainer.config.sections import TrainingGrpoConfig
from trainer.modeling import attention_kernel_for, decoder_and_head

# What grpo_loss adds up for the logged means: answers, answer tokens, then sums over the answer tokens (the loss
# module adds the entropy's)
LOSS_STATS = ("completions", "tokens", "kl", "clip_low", "clip_high", "clip_region")
TOKEN_STATS = (*LOSS_STATS, "entropy")
# and what the advantages add up: groups, groups whose answers all got the same reward, scored answers, rewards, squares
REWARD_STATS = ("groups", "zero_spread", "scored", "reward", "reward_sq")
STD_EPSILON = 1e-4  # added to the standard deviation before dividing, as TRL does: a group without spread stays at 0


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The sample standard deviation (Bessel's correction) of the non-NaN values along dim; NaN where fewer than two."""
    count = (~x.isnan()).sum(dim=dim, keepdim=True)
    variance = torch.nanmean((x - torch.nanmean(x, dim=dim, keepdim=True)) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    return torch.where(count > 1, variance, torch.full_like(variance, float("nan"))).sqrt().squeeze(dim)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage of each answer, whether each group's rewards have no spread) of rewards (answers,), in groups of
    `group_size` consecutive answers; scale is group, batch or none. A NaN reward (no grader could score the
    answer) is left out of its group's mean and spread, and its advantage is 0."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (answers,) in whole groups of {group_size}, got shape {tuple(rewards.shape)}")
    grouped = rewards.float().view(-1, group_size)
    group_std = _nanstd(grouped, dim=1)
    zero_spread = torch.isclose(group_std, torch.zeros_like(group_std))
    advantages = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).reshape(-1)
    if scale == "group":
        advantages = advantages / (group_std.repeat_interleave(group_size) + STD_EPSILON)
    elif scale == "batch":
        batch_std = _nanstd(grouped.reshape(-1), dim=0) if rewards.numel() > 1 else torch.zeros(())
        advantages = advantages / (batch_std + STD_EPSILON)
    elif scale != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale!r}")
    return torch.nan_to_num(advantages, nan=0.0), zero_spread


def loss_units(completion_mask: torch.Tensor, loss_type: str, max_completion_length: int) -> torch.Tensor:
    """What a micro-batch's loss sum is divided by, over its accumulation window (see the module docstring)."""
    answers = completion_mask.shape[0]
    if loss_type == "dapo":
        return completion_mask.sum()
    if loss_type == "bnpo":
        return torch.ones((), dtype=torch.long, device=completion_mask.device)
    if loss_type == "grpo":
        return torch.tensor(answers, device=completion_mask.device)
    if loss_type == "dr_grpo":
        return torch.tensor(answers * max_completion_length, device=completion_mask.device)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def grpo_loss(logps: torch.Tensor, completion_mask: torch.Tensor, advantages: torch.Tensor, settings: TrainingGrpoConfig,
              old_logps: torch.Tensor | None = None, ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss sum, units, LOSS_STATS sums) of a micro-batch of answers; loss sum / units is the batch's loss alone.

    logps, old_logps, ref_logps: (answers, answer length) per-token log-probs of the policy (with grad), of the
    policy that sampled them (None: the detached current ones, num_iterations 1) and of the reference (needed
    when beta > 0); completion_mask (answers, answer length) 1 on answer tokens; advantages (answers,)."""
    mask = completion_mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    low, high = settings.epsilon, settings.epsilon if settings.epsilon_high is None else settings.epsilon_high
    token_loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - low, 1 + high) * adv)
    kl = torch.zeros_like(logps)
    if settings.beta:
        if ref_logps is None:
            raise ValueError("grpo with beta > 0 needs the reference model's log-probabilities of the answers")
        delta = ref_logps - logps
        kl = (torch.exp(delta) - delta - 1) * ratio
        token_loss = token_loss + settings.beta * kl
    masked = token_loss * mask
    if settings.loss_type == "grpo":
        loss_sum = (masked.sum(1) / mask.sum(1).clamp(min=1)).sum()
    elif settings.loss_type == "bnpo":
        loss_sum = masked.sum() / mask.sum().clamp(min=1)
    else:  # dapo and dr_grpo: the plain sum, told apart by their units
        loss_sum = masked.sum()
    with torch.no_grad():
        clip_low = ((ratio < 1 - low) & (adv < 0)).to(mask.dtype)
        clip_high = ((ratio > 1 + high) & (adv > 0)).to(mask.dtype)
        stats = torch.stack([torch.tensor(float(logps.shape[0]), device=logps.device), mask.sum(), (kl * mask).sum(),
                             (clip_low * mask).sum(), (clip_high * mask).sum(), (torch.maximum(clip_low, clip_high) * mask).sum()]).double()
    return loss_sum, loss_units(completion_mask, settings.loss_type, settings.max_completion_length), stats


class GRPOLoss(nn.Module):
    """The grpo loss of a collated batch of answers; forward gives (loss sum, units).

    Each forward also adds its answers' statistics to `totals` (TOKEN_STATS), which the objective turns into the
    logged means and clears."""

    def __init__(self, model: nn.Module, settings: TrainingGrpoConfig):
        super().__init__()
        self.model = model
        self.decoder, self.head, self.choose_kernel = decoder_and_head(model)
        self.settings = settings
        self.totals = {"train": torch.zeros(len(TOKEN_STATS), dtype=torch.float64), "eval": torch.zeros(len(TOKEN_STATS), dtype=torch.float64)}

    def logps(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
              position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """((answers, answer length) log-probs of the answer tokens, 0 elsewhere; their summed entropy), with logits
        at the answer positions only: a row is the prompt, then the answer's completion_mask.shape[1] positions."""
        with attention_kernel_for(input_ids) if self.choose_kernel else contextlib.nullcontext():
            hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
        length = completion_mask.shape[1]
        keep = completion_mask.bool()
        logits = self.head(hidden[:, -length - 1 : -1][keep]).float() / self.settings.temperature
        all_logps = torch.log_softmax(logits, dim=-1)
        token_logps = all_logps.gather(1, input_ids[:, -length:][keep].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            entropy = -(all_logps.exp() * all_logps).sum()
        return torch.zeros(keep.shape, dtype=token_logps.dtype, device=token_logps.device).masked_scatter(keep, token_logps), entropy

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor, advantages: torch.Tensor,
                old_logps: torch.Tensor | None = None, ref_logps: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logps, entropy = self.logps(input_ids, attention_mask, completion_mask, position_ids)
        loss_sum, units, stats = grpo_loss(logps, completion_mask, advantages, self.settings, old_logps, ref_logps)
        mode = "train" if self.training else "eval"
        self.totals[mode] = self.totals[mode] + torch.cat([stats, entropy.double().reshape(1)]).cpu()
        return loss_sum, units


class GRPO:
    """Prompts in, answers sampled and graded, the answers with a higher reward than their group's mean made more
    likely; rewards, KL, clipping and answer length logged. Its batching and the sampling are the loop's (module
    docstring), so it has no `batching` yet."""

    name: ClassVar[str] = "grpo"
    pairs: ClassVar[bool] = False
    samples: ClassVar[bool] = True  # its own loop samples the answers (trainer/reinforcement/)
    unit: ClassVar[str] = "prompts"
    autotrain_trainer: ClassVar[str] = ""  # AutoTrain has no GRPO (refused: trainer/backends/autotrain/refusals.py)

    def __init__(self, config: Config):
        self.config = config
        self.settings = config.training.grpo
        self.needs_reference = self.settings.beta > 0  # the reference pass costs a forward over every answer
        self.loss: GRPOLoss | None = None
        self.reward_totals = {"train": torch.zeros(len(REWARD_STATS), dtype=torch.float64), "eval": torch.zeros(len(REWARD_STATS), dtype=torch.float64)}

    def module(self, model: nn.Module) -> nn.Module:
        for layer in model.modules():  # as dpo: the ratio compares the policy with log-probs computed without dropout
            if isinstance(layer, nn.Dropout):
                layer.p = 0.0
        self.loss = GRPOLoss(model, self.settings)
        return self.loss

    def advantages(self, rewards: torch.Tensor, training: bool = True) -> torch.Tensor:
        """The advantage of each answer of a whole batch from its reward (answers,), groups of num_generations
        consecutive answers; the rewards are added to what take_metrics logs."""
        advantages, zero_spread = group_advantages(rewards, self.settings.num_generations, self.settings.scale_rewards)
        scored = rewards[~rewards.isnan()].double()
        stats = torch.tensor([zero_spread.numel(), zero_spread.sum().item(), scored.numel(), scored.sum().item(), (scored**2).sum().item()],
                             dtype=torch.float64)
        mode = "train" if training else "eval"
        self.reward_totals[mode] = self.reward_totals[mode] + stats
        return advantages

    def units(self, batch: dict) -> int:
        return int(loss_units(batch["completion_mask"], self.settings.loss_type, self.settings.max_completion_length))

    def take_metrics(self, prefix: str = "") -> dict[str, float]:
        """The means since the last call (prefix eval_: of the evaluation), then cleared: reward mean and spread over
        the scored answers, share of groups without spread, answer length, and per answer token KL, the shares
        clipped (low: ratio below 1 - epsilon with a negative advantage; high: above 1 + epsilon_high with a
        positive one; region: either) and the entropy."""
        mode = "eval" if prefix else "train"
        out: dict[str, float] = {}
        groups, zero_spread, scored, reward, reward_sq = (float(v) for v in self.reward_totals[mode])
        if groups:
            mean = reward / max(scored, 1)
            variance = (reward_sq - scored * mean**2) / (scored - 1) if scored > 1 else 0.0
            out |= {f"{prefix}reward": round(mean, 6), f"{prefix}reward_std": round(max(variance, 0.0) ** 0.5, 6),
                    f"{prefix}zero_spread_groups": round(zero_spread / groups, 6)}
            self.reward_totals[mode] = torch.zeros_like(self.reward_totals[mode])
        if self.loss is not None and float(self.loss.totals[mode][0]):
            answers, tokens, kl, low, high, region, entropy = (float(v) for v in self.loss.totals[mode])
            per_token = max(tokens, 1.0)
            out |= {f"{prefix}completion_length": round(tokens / answers, 4), f"{prefix}clip_low": round(low / per_token, 6),
                    f"{prefix}clip_high": round(high / per_token, 6), f"{prefix}clip_region": round(region / per_token, 6),
                    f"{prefix}entropy": round(entropy / per_token, 6)}
            if self.settings.beta:
                out[f"{prefix}kl"] = round(kl / per_token, 6)
            self.loss.totals[mode] = torch.zeros_like(self.loss.totals[mode])
        return out
