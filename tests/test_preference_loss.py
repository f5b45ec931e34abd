"""DPO and ORPO losses and gradients against TRL's own trainers on the same batch (TRL is the oracle: the dev extra).

Each test builds TRL's trainer on a tiny random Llama and the character tokenizer, takes one batch from TRL's own
data collator, and feeds the same token ids to trainer's PreferenceLoss (the answer tokens are TRL's completion
mask). The reference model is a copy of the policy before it was nudged, so the log-ratios are not zero.
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_char_tokenizer, tiny_llama

from trainer.config.validate import parse_config
from trainer.data.templates import CHATML
from trainer.data.tokenize import IGNORE
from trainer.objectives.preference import PreferenceLoss

PAIRS = [("say red", "red", "blue"), ("say gold", "gold", "silver"), ("name a fruit", "apple pie", "a car"), ("2+2?", "4", "five")]
TOL = 1e-5


def _config(objective: str, **settings: object) -> object:
    lines = "".join(f"\n    {k}: {v}" for k, v in settings.items())
    section = f"\n  {objective}:{lines}" if settings else ""
    text = f"model: {{name_or_path: m}}\ndata: {{train: d.jsonl}}\ntraining:\n  objective: {objective}\n  epochs: 1{section}\n"
    return parse_config(text, check_files=False)


def _models() -> tuple[object, object]:
    tokenizer = make_char_tokenizer(CHATML)
    reference = tiny_llama(vocab_size=len(tokenizer), seed=3).float()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return tokenizer, (policy.train(), reference.eval())


def _dataset() -> object:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                               "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PAIRS])


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=TOL, rtol=1e-4), f"{name}: max diff {(ours[name] - theirs[name]).abs().max()}"


def _our_loss(config: object, policy: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
              reference: torch.Tensor | None) -> tuple[torch.Tensor, PreferenceLoss]:
    module = PreferenceLoss(policy, config)
    module.choose_kernel = False  # the same attention kernel as TRL's call
    loss_sum, pairs = module(input_ids, labels, attention_mask, reference)
    return loss_sum / pairs, module


@pytest.mark.parametrize("settings", [{"beta": 0.1}, {"beta": 0.5, "loss": "ipo"}, {"beta": 0.1, "sft_weight": 1.0}],
                         ids=["sigmoid", "ipo", "sigmoid+sft"])
def test_dpo_loss_and_gradients_equal_trl(tmp_path, settings):
    from trl import DPOConfig, DPOTrainer

    tokenizer, (policy, reference) = _models()
    loss_types = [settings.get("loss", "sigmoid")] + (["sft"] if settings.get("sft_weight") else [])
    args = DPOConfig(output_dir=str(tmp_path), beta=settings["beta"], loss_type=loss_types,
                     loss_weights=[1.0, settings["sft_weight"]] if settings.get("sft_weight") else None,
                     per_device_train_batch_size=len(PAIRS), report_to=[], use_cpu=True, bf16=False, max_length=128)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=_dataset(), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    trl_grads = _grads(trainer.model)
    trainer.model.zero_grad()

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    with torch.no_grad():
        ref_sums, _, _ = PreferenceLoss(reference, _config("dpo")).logps(batch["input_ids"], labels, batch["attention_mask"])
    ours, module = _our_loss(_config("dpo", **settings), trainer.model, batch["input_ids"], labels, batch["attention_mask"], ref_sums)
    ours.backward()
    assert abs(ours.item() - theirs.item()) < TOL, (ours.item(), theirs.item())
    assert abs(ours.item() - 0.6931) > 1e-3  # the policy differs from the reference: a real comparison
    _assert_same_grads(_grads(trainer.model), trl_grads)


def test_orpo_odds_ratio_and_gradients_equal_trl(tmp_path):
    """TRL's ORPO computes its NLL term over the prompt and the answer; the ORPO paper (and trainer) over the answer
    only. So the oracle is TRL's own odds-ratio term and per-token log-probs, plus the NLL of the answer tokens."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tokenizer, (policy, _) = _models()
    weight = 0.25
    args = ORPOConfig(output_dir=str(tmp_path), beta=weight, per_device_train_batch_size=len(PAIRS), report_to=[], use_cpu=True,
                      bf16=False, max_length=128)
    trainer = ORPOTrainer(model=policy, args=args, train_dataset=_dataset(), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    joined = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=trainer.padding_value, device="cpu")
    ids, labels, mask = joined["concatenated_input_ids"], joined["concatenated_labels"], joined["concatenated_attention_mask"]
    pairs = len(PAIRS)

    logits = trainer.model(ids, attention_mask=mask, use_cache=False).logits
    logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    odds_ratio, *_ = trainer.odds_ratio_loss(logps[:pairs], logps[pairs:])
    answer_nll = torch.nn.functional.cross_entropy(logits[:pairs, :-1].reshape(-1, logits.shape[-1]), labels[:pairs, 1:].reshape(-1), ignore_index=IGNORE)
    theirs = answer_nll - odds_ratio.mean()
    theirs.backward()
    trl_grads = _grads(trainer.model)
    trainer.model.zero_grad()

    ours, module = _our_loss(_config("orpo", weight=weight), trainer.model, ids, labels, mask, None)
    ours.backward()
    assert abs(ours.item() - theirs.item()) < TOL, (ours.item(), theirs.item())
    _assert_same_grads(_grads(trainer.model), trl_grads)
    totals = module.totals["train"]
    assert totals[0] == pairs and torch.isclose(totals[1] / pairs, (weight * logps[:pairs]).mean().double(), atol=1e-5)
