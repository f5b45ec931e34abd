"""What the AutoTrain backend cannot run at all, whatever backend.autotrain.allow_differences says.

`refusals` gives each as (key path, message). They are reported with the config's own rules (trainer/config/rules.py
asks the backend for them), at their YAML lines, wherever a config is read; where AutoTrain would only train
differently is differences.py.
"""
from __future__ import annotations

from trainer.backends.autotrain.differences import ORPO_LAMBDA
from trainer.config.model import Config


def refusals(config: Config) -> list[tuple[tuple, str]]:
    return [*_objective(config), *_processes(config), *_packing(config), *_preference(config), *_adapter(config)]


def _objective(config: Config) -> list[tuple[tuple, str]]:
    if config.training.objective != "grpo":
        return []
    return [(("training", "objective"), "AutoTrain has no GRPO (its LLM tasks are sft, generic, dpo, orpo and reward); "
                                        "set backend.name: peft, or another training.objective.")]


def _processes(config: Config) -> list[tuple[tuple, str]]:
    if config.distributed.strategy == "none":
        return []
    return [(("distributed", "strategy"), "trainer launches several processes for its own loop only; with backend.name: autotrain "
                                          "AutoTrain uses every visible GPU itself. Set distributed.strategy: none.")]


def _packing(config: Config) -> list[tuple[tuple, str]]:
    if config.data.packing and config.data.train_on == "assistant":
        return [(("data", "packing"), "packing with train_on: assistant requires the peft backend (AutoTrain's packing learns every token); "
                                      "set backend.name: peft, or data.packing: false, or data.train_on: all.")]
    return []


def _preference(config: Config) -> list[tuple[tuple, str]]:
    t = config.training
    found: list[tuple[tuple, str]] = []
    if t.objective == "orpo" and t.orpo.weight != ORPO_LAMBDA:
        found.append((("training", "orpo", "weight"), f"AutoTrain's llm-orpo always trains with lambda {ORPO_LAMBDA} (it does not pass "
                                                      f"params.dpo_beta on to ORPO); set training.orpo.weight: {ORPO_LAMBDA}, or backend.name: peft."))
    if t.objective == "dpo" and t.dpo.loss != "sigmoid":
        found.append((("training", "dpo", "loss"), "AutoTrain's llm-dpo trains with the sigmoid loss only; set training.dpo.loss: sigmoid, "
                                                   "or backend.name: peft."))
    if t.objective == "dpo" and t.dpo.sft_weight:
        found.append((("training", "dpo", "sft_weight"), "AutoTrain's llm-dpo has no SFT term; set training.dpo.sft_weight: 0, or backend.name: peft."))
    return found


def _adapter(config: Config) -> list[tuple[tuple, str]]:
    if config.model.adapter is None:
        return []
    return [(("model", "adapter"), "AutoTrain starts from a whole model only; merge the adapter first (its run's model-merged/ folder, "
                                   "written with output.merge_adapter: true) and set model.name_or_path to it, or set backend.name: peft.")]
