"""The grpo loss, its gradients, advantages and logged figures against TRL's GRPOTrainer on the same batch (TRL is the
oracle: the dev extra).

TRL samples through a `rollout_func` here that returns fixed token ids instead, and its reward function returns fixed
rewards, so TRL's own `_generate_and_score_completions` builds the batch (padding, advantages, the reference and old
log-probs) and its `_compute_loss` computes the loss. trainer gets the same prompts, answers and rewards and computes
all of it itself. The policy is moved away from the model it starts from (the reference), and, with num_iterations 2,
again after the batch was sampled, so that the KL term and the clipping are at work.
"""
from __future__ import annotations

import math
import statistics

import pytest
import torch
from conftest import make_char_tokenizer

from trainer.config.validate import parse_config
from trainer.objectives.grpo import GRPO, GRPOLoss, group_advantages

GROUP = 4
PROMPTS = ["say red", "name a fruit", "2+2?"]  # of different lengths: TRL pads them on the left
ANSWERS = ["red</s>", "blue</s>", "rouge", "red</s>",  # "rouge": cut at max_completion_length, no EOS
           "apple</s>", "a car</s>", "pear</s>", "fig</s>",
           "4</s>", "four</s>", "5</s>", "22</s>"]
REWARDS = [1.0, 0.0, None, 1.0,  # None: no grader could score it (NaN: out of its group's mean and spread)
           0.5, 0.5, 0.5, 0.5,  # a group without spread: its advantages are 0
           1.0, 0.8, 0.0, -0.5]
MAX_COMPLETION_LENGTH = 8
TOL = 1e-5


def _config(**grpo: object) -> object:
    # the peft backend refuses objective grpo until its loop samples, so the settings go into a valid sft config
    config = parse_config("model: {name_or_path: m}\ndata: {train: d.jsonl}\ntraining: {epochs: 1}\n", check_files=False)
    settings = config.training.grpo.replace(num_generations=GROUP, max_completion_length=MAX_COMPLETION_LENGTH, **grpo)
    return config.replace(training=config.training.replace(objective="grpo", grpo=settings))


def _nudge(parameters: list[torch.nn.Parameter], seed: int, scale: float) -> None:
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in parameters:
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    diff = float((ours - theirs).abs().max())
    assert diff < TOL, f"{what}: max diff {diff}"


def _trl_trainer(tmp_path, model_dir, settings: dict, lora: bool, accumulation: int = 1) -> object:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = make_char_tokenizer()
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if not lora:  # the reference is the model in model_dir (TRL loads its own copy): move the policy away from it
        _nudge(list(policy.parameters()), seed=7, scale=0.05)

    def fixed_answers(prompts: list, trainer: object) -> dict:
        assert len(prompts) == len(ANSWERS)
        return {"prompt_ids": [tokenizer(p)["input_ids"] for p in prompts], "completion_ids": [tokenizer(a)["input_ids"] for a in ANSWERS],
                "logprobs": None}

    def fixed_rewards(completions: list, reward: list, **_: object) -> list:
        return reward

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(ANSWERS) // accumulation, gradient_accumulation_steps=accumulation,
                      num_generations=GROUP, max_completion_length=MAX_COMPLETION_LENGTH, report_to=[], use_cpu=True, bf16=False, **settings)
    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]) if lora else None
    trainer = GRPOTrainer(model=policy, reward_funcs=fixed_rewards, args=args, processing_class=tokenizer, peft_config=peft_config,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]), rollout_func=fixed_answers)
    if lora:  # a new adapter starts as the identity: move it, so that the policy is not its own reference
        _nudge([p for n, p in trainer.model.named_parameters() if "lora_" in n], seed=7, scale=0.3)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation  # set by Trainer's own loop, which does not run here
    return trainer


CASES = [  # (beta, num_iterations, scale_rewards, temperature): every aggregation runs each
    (0.0, 1, "group", 1.0),
    (0.04, 1, "batch", 0.7),
    (0.04, 2, "none", 1.0),
    (0.0, 2, "group", 0.7),
]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo", "dapo"])
@pytest.mark.parametrize("beta, iterations, scale, temperature", CASES, ids=[f"beta{b}-mu{m}-{s}-t{t}" for b, m, s, t in CASES])
def test_loss_gradients_and_advantages_equal_trl(tmp_path, tiny_model_dir, loss_type, beta, iterations, scale, temperature):
    _compare_with_trl(tmp_path, tiny_model_dir, lora=False, beta=beta, num_iterations=iterations, scale_rewards=scale,
                      temperature=temperature, loss_type=loss_type, epsilon=0.2, epsilon_high=0.28)


@pytest.mark.parametrize("loss_type, iterations", [("dapo", 2), ("grpo", 1)])
def test_lora_loss_and_gradients_equal_trl_with_the_adapter_off_as_reference(tmp_path, tiny_model_dir, loss_type, iterations):
    _compare_with_trl(tmp_path, tiny_model_dir, lora=True, beta=0.1, num_iterations=iterations, scale_rewards="group",
                      temperature=0.9, loss_type=loss_type, epsilon=0.2, epsilon_high=None)


def _batch(trainer: object) -> dict:
    """TRL's batch of the fixed answers and rewards, as its _generate_and_score_completions builds it."""
    groups = [REWARDS[i:i + GROUP] for i in range(0, len(REWARDS), GROUP)]
    return trainer._generate_and_score_completions([{"prompt": p, "reward": r} for p, group in zip(PROMPTS, groups) for r in group])


def _rows(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, completion_mask) of trainer's rows: the prompt, then the answer."""
    return (torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1), torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
            batch["completion_mask"])


def _compare_with_trl(tmp_path, model_dir, lora: bool, **settings: object) -> None:
    from transformers import AutoModelForCausalLM

    trainer = _trl_trainer(tmp_path, model_dir, {k: v for k, v in settings.items() if k != "epsilon_high" or v is not None}, lora)
    model = trainer.model
    batch = _batch(trainer)

    config = _config(**settings)
    objective = GRPO(config)
    assert objective.needs_reference == bool(settings["beta"])
    module = objective.module(model)
    assert isinstance(module, GRPOLoss)
    module.choose_kernel = False  # the same attention kernel as TRL's call
    input_ids, attention_mask, completion_mask = _rows(batch)
    rewards = torch.tensor([math.nan if r is None else r for r in REWARDS])

    advantages = objective.advantages(rewards)
    _close(advantages, batch["advantages"], "advantages")
    reference = old = None
    with torch.no_grad():
        if objective.needs_reference:
            if lora:
                with model.disable_adapter():
                    reference, _ = module.logps(input_ids, attention_mask, completion_mask)
            else:
                start = GRPOLoss(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), config.training.grpo)
                start.choose_kernel = False
                reference, _ = start.logps(input_ids, attention_mask, completion_mask)
            _close(reference, batch["ref_per_token_logps"], "reference log-probs")
        if settings["num_iterations"] > 1:
            old, _ = module.logps(input_ids, attention_mask, completion_mask)
            _close(old, batch["old_per_token_logps"], "old log-probs")
            # a later pass over the same samples: the policy has moved since it sampled them
            _nudge([p for p in model.parameters() if p.requires_grad], seed=11, scale=0.5 if lora else 0.05)
        else:
            assert "old_per_token_logps" not in batch  # TRL uses the detached current log-probs, as trainer does with None

    theirs = trainer._compute_loss(model, batch)
    theirs.backward()
    trl_grads = _grads(model)
    model.zero_grad()
    loss_sum, units = module(input_ids, attention_mask, completion_mask, advantages, old, reference)
    ours = loss_sum / units
    ours.backward()
    ours_grads = _grads(model)

    assert abs(ours.item() - theirs.item()) < TOL, (ours.item(), theirs.item())
    assert ours_grads.keys() == trl_grads.keys() and ours_grads
    # a real comparison, not two zeros (the loss itself can be 0: with r = 1, grpo's mean of per-answer means is minus
    # the mean advantage, 0 in every group)
    assert max(float(g.abs().max()) for g in trl_grads.values()) > 1e-3
    assert all(("lora_" in name) == lora for name in ours_grads)
    for name in ours_grads:
        _close(ours_grads[name], trl_grads[name], name)
    assert units.item() == objective.units({"completion_mask": completion_mask})

    logged, figures = trainer._metrics["train"], objective.take_metrics()
    clipped = settings["num_iterations"] > 1
    assert (figures["clip_region"] > 0) == clipped  # clipping only works once the policy has moved from the sampler
    for ours_name, trl_name in [("clip_low", "clip_ratio/low_mean"), ("clip_high", "clip_ratio/high_mean"),
                                ("clip_region", "clip_ratio/region_mean"), ("entropy", "entropy")] + ([("kl", "kl")] if settings["beta"] else []):
        assert figures[ours_name] == pytest.approx(logged[trl_name][-1], abs=1e-5), ours_name
    assert figures["reward"] == pytest.approx(logged["reward"][-1], abs=1e-6)
    assert figures["reward_std"] == pytest.approx(logged["reward_std"][-1], abs=1e-6)
    assert figures["zero_spread_groups"] == pytest.approx(1 / 3)  # the group of 0.5s
    assert figures["completion_length"] == pytest.approx(float(completion_mask.sum()) / len(ANSWERS))
    assert objective.take_metrics() == {}  # cleared


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo", "dapo"])
def test_a_window_of_two_micro_batches_equals_trls_accumulation(tmp_path, tiny_model_dir, loss_type):
    """The loop divides the window's loss sum by its units; TRL scales each micro-batch's loss instead. The same."""
    trainer = _trl_trainer(tmp_path, tiny_model_dir, {"loss_type": loss_type}, lora=False, accumulation=2)
    batch = _batch(trainer)
    halves = [{k: v[rows] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in batch.items()} for rows in (slice(0, 6), slice(6, 12))]
    theirs = sum(trainer._compute_loss(trainer.model, half) for half in halves)
    theirs.backward()
    trl_grads = _grads(trainer.model)
    trainer.model.zero_grad()

    module = GRPO(_config(loss_type=loss_type)).module(trainer.model)
    module.choose_kernel = False
    advantages = group_advantages(torch.tensor([math.nan if r is None else r for r in REWARDS]), GROUP, "group")[0]
    sums, units = zip(*(module(*_rows(half), advantages[rows]) for half, rows in zip(halves, (slice(0, 6), slice(6, 12)))))
    ours = sum(sums) / sum(units)
    ours.backward()
    assert abs(ours.item() - theirs.item()) < TOL, (ours.item(), theirs.item())
    ours_grads = _grads(trainer.model)
    assert ours_grads.keys() == trl_grads.keys() and max(float(g.abs().max()) for g in trl_grads.values()) > 1e-3
    for name in ours_grads:
        _close(ours_grads[name], trl_grads[name], name)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_by_hand(scale):
    rewards = torch.tensor([1.0, 0.0, math.nan, 1.0, 2.0, 2.0, 2.0, 2.0])
    advantages, zero_spread = group_advantages(rewards, 4, scale)
    centred = torch.tensor([1 / 3, -2 / 3, 0.0, 1 / 3, 0.0, 0.0, 0.0, 0.0])
    divisor = {"group": torch.tensor([statistics.stdev([1, 0, 1])] * 4 + [0.0] * 4), "batch": torch.full((8,), statistics.stdev([1, 0, 1, 2, 2, 2, 2])),
               "none": torch.full((8,), 1 - 1e-4)}[scale]
    assert torch.allclose(advantages, centred / (divisor + 1e-4), atol=1e-6)
    assert zero_spread.tolist() == [False, True]


def test_rewards_in_broken_groups_are_refused():
    with pytest.raises(ValueError, match=r"whole groups of 4"):
        group_advantages(torch.zeros(6), 4, "group")
