"""What a run learns, chosen once at setup from training.objective: an Objective object (base.py) from a registry.

The recipe, the loop, the data build and `trainer eval` ask the objective (what data it reads, how it batches, its
loss module, its units, what it logs, whether it needs a reference pass); none of them compares objective names.
Registration is by import path, as for backends, so naming an objective imports nothing heavy.

Adding an objective:
  1. trainer/objectives/<name>.py: a class with the attributes and methods of `Objective` (trainer/objectives/base.py),
     built from the Config; its loss module's forward gives (loss sum, units).
  2. one line below: register_objective("<name>", "trainer.objectives.<name>:<Class>").
The config side (the name in training.objective's enum in trainer/config/schema.json, and any settings section with
its rules) is the config's, as for any new setting.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.registry import Registry

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.objectives.base import Objective, ObjectiveClass

OBJECTIVES = Registry("objective", "objectives")
register_objective = OBJECTIVES.register  # register_objective("<name>", "package.module:ClassName")
known_objectives = OBJECTIVES.known


def get_objective(name: str) -> ObjectiveClass:
    """The class of the objective called `name`; an unknown name lists the known ones."""
    cls: ObjectiveClass = OBJECTIVES.load(name)
    return cls


def objective_for(config: Config) -> Objective:
    """The objective training.objective names, built from the config."""
    return get_objective(config.training.objective)(config)


register_objective("sft", "trainer.objectives.sft:SFT")
register_objective("dpo", "trainer.objectives.preference:DPO")
register_objective("orpo", "trainer.objectives.preference:ORPO")
register_objective("grpo", "trainer.objectives.grpo:GRPO")

