"""How the model is trained, chosen once from training.method: a Method object (base.py) from a registry.

Loading and adapting the model (trainer/models.py), saving and merging the result (the peft recipe, the model card in
trainer/rundir.py) and the plan's counts (trainer/plan/: trainable parameters, weight bytes, optimizer state, FLOPs)
ask the method; none of them compares method names. Registration is by import path and the method modules import
torch, transformers and peft inside their functions only, so `trainer plan` and `trainer validate` stay torch-free.

Adding a method:
  1. trainer/methods/<name>.py: a class with the attributes and methods of `Method` (trainer/methods/base.py); a
     variant of LoRA can subclass LoRA (trainer/methods/lora.py), as DoRA and QLoRA do.
  2. one line below: register_method("<name>", "trainer.methods.<name>:<Class>").
The config side (the name in training.method's enum in trainer/config/schema.json, and any rules for it) is the
config's, as for any new setting.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.methods.base import Method

_REGISTRY: dict[str, str] = {}


def register_method(name: str, target: str) -> None:
    """Register a method class by import path, "package.module:ClassName"."""
    _REGISTRY[name] = target


def known_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; the known methods are: {', '.join(known_methods())}.")
    module_name, _, class_name = _REGISTRY[name].partition(":")
    method: Method = getattr(importlib.import_module(module_name), class_name)()
    return method


def method_for(config: Config) -> Method:
    """The method training.method names."""
    return get_method(config.training.method)


register_method("lora", "trainer.methods.lora:LoRA")
register_method("dora", "trainer.methods.lora:DoRA")
register_method("qlora", "trainer.methods.qlora:QLoRA")
register_method("full", "trainer.methods.full:Full")
