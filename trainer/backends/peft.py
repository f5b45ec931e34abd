"""The built-in backend: trainer's own training loop on transformers + peft + accelerate.

The recipe (setup -> train -> save -> cleanup) is trainer/recipe.py and the loop
trainer/loop.py; this module only names the backend, so that choosing it (or
`trainer validate`) imports no torch.
"""
from __future__ import annotations

from pathlib import Path

from trainer.config import Config


class PeftBackend:
    name = "peft"

    def refusals(self, config: Config) -> list[tuple[tuple, str]]:
        return []

    def check(self, config: Config) -> list[tuple[tuple, str]]:
        return []

    def check_machine(self, config: Config) -> list[tuple[tuple, str]]:
        return []

    def trains_packed_rows(self, config: Config) -> bool:
        return config.data.packing

    def plan_note(self, config: Config) -> str | None:
        return None

    def train(self, config: Config, run_dir: Path, resume: bool) -> Path:
        from trainer.recipe import train

        return train(config, run_dir, resume)
