"""Names to classes, registered by import path ("package.module:ClassName"): backends, objectives and methods.

Naming a class imports nothing; its module is imported when a run asks for it, so `trainer validate` and `trainer
plan` never pay for torch. An unknown name is a UserError that lists the known ones.
"""
from __future__ import annotations

import importlib
from typing import Any

from trainer.errors import UserError


class Registry:
    def __init__(self, kind: str, plural: str):
        self.kind, self.plural = kind, plural  # for the message: "unknown method 'x'; the known methods are: ..."
        self._targets: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        self._targets[name] = target

    def known(self) -> list[str]:
        return sorted(self._targets)

    def target(self, name: str) -> tuple[str, str]:
        """(module, class name) registered as `name`."""
        if name not in self._targets:
            raise UserError(f"unknown {self.kind} {name!r}; the known {self.plural} are: {', '.join(self.known())}.")
        module_name, _, class_name = self._targets[name].partition(":")
        return module_name, class_name

    def load(self, name: str) -> Any:
        """The class registered as `name`, its module imported."""
        module_name, class_name = self.target(name)
        return getattr(importlib.import_module(module_name), class_name)
