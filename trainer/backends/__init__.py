"""Backends behind one small protocol and a registry: dispatch is a dict lookup.

A backend is named in the YAML (`backend.name`). Its module is imported only
when a run needs it, so `trainer validate` never pays for torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trainer.errors import UserError
from trainer.registry import Registry

if TYPE_CHECKING:  # not at run time: the config's rules ask the backend for its refusals, so config imports this module
    from trainer.config import Config


class Backend(Protocol):
    name: str

    def refusals(self, config: Config) -> list[tuple[tuple, str]]:
        """What this backend cannot run at all, whatever else is set, as (path, message) pairs. Reported with the
        config's own rules (trainer/config/rules.py) wherever a config is read, so it must import nothing heavy."""

    def check(self, config: Config) -> list[tuple[tuple, str]]:
        """Problems with this config that only this backend has, on any machine, as (path, message) pairs.
        `trainer validate` reports them too, so it must import nothing heavy."""

    def check_machine(self, config: Config) -> list[tuple[tuple, str]]:
        """What this machine lacks for running the config with this backend, as (path, message) pairs."""

    def trains_packed_rows(self, config: Config) -> bool:
        """Whether it trains rows of examples packed to data.max_seq_length (`trainer plan` counts the tokens so)."""

    def plan_note(self, config: Config) -> str | None:
        """What `trainer plan` should say about how this backend's training time is counted, if anything."""

    def train(self, config: Config, run_dir: Path, resume: bool) -> Path:
        """Train, write the run directory, and return it."""


BACKENDS = Registry("backend", "backends")
register = BACKENDS.register  # register("<name>", "package.module:ClassName")
known_backends = BACKENDS.known


def get_backend(name: str) -> Backend:
    module_name, class_name = BACKENDS.target(name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UserError(f"the {name} backend is not available in this version of trainer; set backend.name: peft.") from None
        raise UserError(
            f"backend {name!r} needs the Python package {exc.name!r}, which is not installed. "
            "Reinstall trainer with its dependencies: pip install -e ."
        ) from None
    return getattr(module, class_name)()


register("peft", "trainer.backends.peft:PeftBackend")
register("autotrain", "trainer.backends.autotrain:AutoTrainBackend")
