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

import importlib
from typing import TYPE_CHECKING, Any

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.objectives.base import Objective, ObjectiveClass

_REGISTRY: dict[str, str] = {}


def register_objective(name: str, target: str) -> None:
    """Register an objective class by import path, "package.module:ClassName"."""
    _REGISTRY[name] = target


def known_objectives() -> list[str]:
    return sorted(_REGISTRY)


def get_objective(name: str) -> ObjectiveClass:
    """The class of the objective called `name`; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise UserError(f"unknown objective {name!r}; the known objectives are: {', '.join(known_objectives())}.")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    cls: ObjectiveClass = getattr(importlib.import_module(module_name), class_name)
    return cls


def objective_for(config: Config) -> Objective:
    """The objective training.objective names, built from the config."""
    return get_objective(config.training.objective)(config)


register_objective("sft", "trainer.objectives.sft:SFT")
register_objective("dpo", "trainer.objectives.preference:DPO")
register_objective("orpo", "trainer.objectives.preference:ORPO")


def __getattr__(name: str) -> Any:
    """Preference and load_or_compute_reference at their old address, for trainer/backends/autotrain.py until it imports
    them from trainer.objectives.preference (which imports torch, so this package does not import it at the top)."""
    if name in ("Preference", "load_or_compute_reference"):
        return getattr(importlib.import_module("trainer.objectives.preference"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
