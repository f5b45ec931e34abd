"""The built-in backend: trainer's own training loop on transformers + peft + accelerate.

recipe.py   the run's lifecycle: setup -> train -> save -> cleanup, each step a small named function
loop.py     the loop itself, top to bottom: accumulate, clip, step, log, evaluate, checkpoint
run.py      what the loop carries (Run); state.py where the run is (TrainState, saved in every checkpoint)

What the run learns is an objective (trainer/objectives/) and how the model trains a method (trainer/methods/);
the distributed modes are trainer/strategies.py. This module only names the backend, so that choosing it (or
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
        from trainer.objectives import objective_for

        if objective_for(config).samples:  # grpo: the model samples its own answers (trainer/reinforcement/)
            from trainer.reinforcement.recipe import train as train_sampling

            return train_sampling(config, run_dir, resume)
        from trainer.backends.peft.recipe import train

        return train(config, run_dir, resume)
