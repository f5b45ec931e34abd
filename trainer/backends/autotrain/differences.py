"""Where AutoTrain Advanced 0.8.36 would train differently from what a trainer config asks.

`differences` gives each as (key path, message). The backend refuses to run them unless
backend.autotrain.allow_differences (then prints them as warnings), `trainer validate` says them before anything
loads, and `trainer export --to autotrain` prints them as warnings. docs/autotrain.md lists them.
"""
from __future__ import annotations

import math

from trainer.config.model import Config

ORPO_LAMBDA = 0.1  # TRL 0.13's ORPOConfig.beta, which AutoTrain 0.8.36 leaves at its default


def whole_epochs(config: Config) -> int:
    """AutoTrain trains whole epochs: a fraction is rounded up, and max_steps (which it cannot express) becomes 1."""
    return max(1, math.ceil(config.training.epochs)) if config.training.epochs else 1


def differences(config: Config) -> list[tuple[tuple, str]]:
    """Where AutoTrain 0.8.36 would train differently from what the config asks, as (key path, message) pairs."""
    t, m = config.training, config.model
    found: list[tuple[tuple, str]] = []
    if t.objective == "grpo":
        return found  # refused outright (refusals.py): there is no AutoTrain run to compare with
    if t.method == "dora":
        found.append((("training", "method"), "AutoTrain has no DoRA; it would train plain LoRA."))
    if t.objective == "sft":
        found += _sft_differences(config)
    else:  # its dpo and orpo train the answers only, one pair per row, as trainer does
        found += preference_differences(config)
    if t.max_steps is not None:
        found.append((("training", "max_steps"), "AutoTrain trains whole epochs and has no step limit; it would train 1 epoch."))
    elif t.epochs is not None and t.epochs != int(t.epochs):
        found.append((("training", "epochs"), f"AutoTrain trains whole epochs; it would train {whole_epochs(config)}."))
    if t.early_stopping is not None:
        found.append((("training", "early_stopping"), "AutoTrain has no early stopping; it trains every epoch."))
    if t.eval_every is not None:
        found.append((("training", "eval_every"), "AutoTrain is not given the validation set (0.8.36 crashes at the end of a "
                      "LoRA run that has one, huggingface/autotrain-advanced#695); trainer measures the validation loss "
                      "once, on the result."))
    if t.save_every is not None:
        found.append((("training", "save_every"), "AutoTrain keeps no checkpoints trainer can resume from."))
    if t.optimizer == "sgd":
        found.append((("training", "optimizer"), "AutoTrain's sgd has no momentum; trainer's uses momentum 0.9."))
    if m.dtype not in ("auto", "float32"):
        found.append((("model", "dtype"), "AutoTrain loads the base weights in float32 (or 4-bit for qlora)."))
    if not float(t.lora.alpha).is_integer() and t.method != "full":
        found.append((("training", "lora", "alpha"), f"AutoTrain takes a whole-number LoRA alpha; it would use {round(t.lora.alpha)}."))
    if m.revision is not None:
        found.append((("model", "revision"), "AutoTrain always loads the newest revision of a Hub model."))
    return found


def _sft_differences(config: Config) -> list[tuple[tuple, str]]:
    d = config.data
    found: list[tuple[tuple, str]] = []
    if d.train_on == "assistant" and d.format != "text":
        found.append((("data", "train_on"), "AutoTrain computes the loss on every token, prompts included; "
                      "trainer's train_on: assistant trains on the answers only."))
    found.append((("data", "packing"), "AutoTrain's SFT always packs examples into blocks of data.max_seq_length tokens "
                  "that run across example boundaries (trainer " + ("packs each example in isolation" if d.packing
                  else "keeps one example per row") + "), so training.batch_size counts blocks, not examples."))
    return found


def preference_differences(config: Config) -> list[tuple[tuple, str]]:
    """Where AutoTrain 0.8.36's llm-dpo or llm-orpo would train differently from what the config asks."""
    t = config.training
    found: list[tuple[tuple, str]] = []
    if t.objective == "dpo" and t.dpo.loss != "sigmoid":
        found.append((("training", "dpo", "loss"), "AutoTrain's llm-dpo trains with the sigmoid loss only."))
    if t.objective == "dpo" and t.dpo.sft_weight:
        found.append((("training", "dpo", "sft_weight"), "AutoTrain's llm-dpo has no SFT term; it would train without it."))
    if t.objective == "orpo" and t.orpo.weight != ORPO_LAMBDA:
        found.append((("training", "orpo", "weight"), f"AutoTrain's llm-orpo always trains with lambda {ORPO_LAMBDA} "
                      "(it does not pass params.dpo_beta on to ORPO)."))
    if t.method != "full" and t.lora.dropout > 0:
        found.append((("training", "lora", "dropout"), f"AutoTrain's {t.objective} (TRL 0.13) switches every dropout off, "
                      "LoRA's included: it would train with dropout 0. Set training.lora.dropout: 0 to train the same."))
    return found
