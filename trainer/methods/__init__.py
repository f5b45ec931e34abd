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

from typing import TYPE_CHECKING

from trainer.registry import Registry

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.methods.base import Method

METHODS = Registry("method", "methods")
register_method = METHODS.register  # register_method("<name>", "package.module:ClassName")
known_methods = METHODS.known


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name lists the known ones."""
    method: Method = METHODS.load(name)()
    return method


def method_for(config: Config) -> Method:
    """The method training.method names."""
    return get_method(config.training.method)


register_method("lora", "trainer.methods.lora:LoRA")
register_method("dora", "trainer.methods.lora:DoRA")
register_method("qlora", "trainer.methods.qlora:QLoRA")
register_method("full", "trainer.methods.full:Full")
