"""The base models a `trainer api` service trains, from the operator's YAML (`trainer api --models FILE`):

    models:
      smollm2-135m:                       # the name clients pass as model=
        path: HuggingFaceTB/SmolLM2-135M-Instruct   # model.name_or_path of every job on it
        aliases: [gpt-4o-mini, gpt-4o-mini-2024-07-18]   # other names that mean this model
        config:                           # optional: trainer settings every job on it starts from
          training: {lora: {r: 8}, save_every: 50}
          data: {max_seq_length: 1024}

A client's hyperparameters are laid over `config` (trainer/api/jobspec.py); the learning rate there (trainer's
default when absent) is what learning_rate_multiplier 1 means.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import Problem, UserError

# a model name becomes part of ft:<base>:<owner>:<suffix>:<id>, so it cannot hold a colon
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class BaseModel:
    name: str
    path: str
    aliases: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    models: tuple[BaseModel, ...]

    def find(self, name: str) -> BaseModel | None:
        return next((m for m in self.models if name == m.name or name in m.aliases), None)

    def names(self) -> list[str]:
        return [m.name for m in self.models]


def load_catalog(file: Path) -> Catalog:
    """The operator's YAML, with every problem at once (file and model named)."""
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"--models {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--models {file} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"models"} or not isinstance(raw["models"], dict) or not raw["models"]:
        raise UserError(f"--models {file}: write `models:` with one entry per base model, e.g.\n"
                        "models:\n  smollm2-135m:\n    path: HuggingFaceTB/SmolLM2-135M-Instruct\n    aliases: [gpt-4o-mini]")
    problems: list[Problem] = []
    models: list[BaseModel] = []
    taken: set[str] = set()
    for name, entry in raw["models"].items():
        where = f"{file}: models.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems.append(Problem(f"{where}: needs `path:` (a Hub id or a folder with the model)"))
            continue
        unknown = set(entry) - {"path", "aliases", "config"}
        if unknown:
            problems.append(Problem(f"{where}: unknown keys {sorted(unknown)}; allowed: path, aliases, config"))
        aliases = entry.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            problems.append(Problem(f"{where}.aliases: a list of names, e.g. [gpt-4o-mini]"))
            aliases = []
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            problems.append(Problem(f"{where}.config: a mapping of trainer settings, e.g. {{training: {{lora: {{r: 8}}}}}}"))
            config = {}
        for each in [str(name), *aliases]:
            if not _NAME.match(each):
                problems.append(Problem(f"{where}: {each!r} is not a usable model name (letters, digits, '.', '_', '-'; no ':')"))
            elif each in taken:
                problems.append(Problem(f"{where}: the name {each!r} is given twice"))
            taken.add(each)
        path = entry["path"]
        if path.startswith((".", "/", "~")):  # a folder: read relative to the YAML, as a config's paths are
            path = str((file.parent / Path(path).expanduser()).resolve())
        models.append(BaseModel(str(name), path, tuple(aliases), config))
    if problems:
        raise UserError(problems, title=f"--models {file} has {len(problems)} problem(s):")
    return Catalog(tuple(models))
