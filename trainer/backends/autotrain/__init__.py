"""The AutoTrain backend: the same YAML, trained by Hugging Face AutoTrain Advanced in its own environment.

AutoTrain 0.8.36 pins transformers 4.48, peft 0.14, trl 0.13 and more, so it
cannot live beside trainer's own dependencies: it gets a virtual environment of
its own (`trainer backends setup autotrain`) and runs as a subprocess. The
hand-over, in order:

1. translate the config (params.py, with the table fields.py shares with
   convert.py), refusing what AutoTrain cannot do unless
   backend.autotrain.allow_differences (differences.py);
2. write the data trainer's pipeline accepted in AutoTrain's local layout
   (handover.py; preference pairs: pairs.py);
3. materialise a local or .gguf model as a folder transformers 4.48 can read
   (handover.py);
4. run `autotrain --config`, streaming its log, and fail on the failures it
   only logs (process.py, in the environment of environment.py);
5. collect the adapter into trainer's run-directory layout, measure the
   validation loss the same way the peft backend does, and write the card
   (results.py).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from trainer.backends.autotrain.differences import differences
from trainer.backends.autotrain.environment import VERSION, autotrain_python, environment_problem
from trainer.backends.autotrain.refusals import refusals
from trainer.config import Config
from trainer.rundir import guard_run_dir


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class AutoTrainBackend:
    name = "autotrain"

    def refusals(self, config: Config) -> list[tuple[tuple, str]]:
        """What AutoTrain cannot run at all (refusals.py)."""
        return refusals(config)

    def check(self, config: Config) -> list[tuple[tuple, str]]:
        """What a run of this config would refuse, whatever the machine: AutoTrain's differences, unless allowed."""
        if config.backend.autotrain.allow_differences:
            return []
        return [(path, message + " Set backend.autotrain.allow_differences: true to run it anyway (AutoTrain's way), "
                 "or use backend.name: peft.") for path, message in differences(config)]

    def check_machine(self, config: Config) -> list[tuple[tuple, str]]:
        """What this machine lacks for the run: AutoTrain's own environment."""
        problem = environment_problem(autotrain_python(config))
        return [(("backend", "autotrain", "python"), problem)] if problem else []

    def trains_packed_rows(self, config: Config) -> bool:
        return True  # AutoTrain always packs rows of block_size

    def plan_note(self, config: Config) -> str | None:
        return ("AutoTrain packs the examples into rows of block_size (data.max_seq_length) tokens, so it "
                "processes rows x block_size tokens, padding included; the token count above is that.")

    def train(self, config: Config, run_dir: Path, resume: bool) -> Path:
        # Imported here: reading a config (convert.py, `trainer validate`) imports this package, and needs none of them.
        from trainer.backends.autotrain.handover import prepare_handover
        from trainer.backends.autotrain.params import project_name
        from trainer.backends.autotrain.process import AutoTrainLog, run_autotrain
        from trainer.backends.autotrain.results import collect

        for path, message in differences(config):
            _say(f"warning: {'.'.join(path)}: {message}")
        if resume and (run_dir / "model").is_dir() and (run_dir / "summary.json").is_file():
            _say(f"{run_dir} already holds the finished AutoTrain run; nothing to resume.")
            return run_dir
        guard_run_dir(run_dir, resume)
        if resume:
            _say("AutoTrain cannot continue an interrupted run; it starts again from the beginning.")
        run_dir.mkdir(parents=True, exist_ok=True)
        work = run_dir / "autotrain"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        python = autotrain_python(config)
        _, tokenizer, data = prepare_handover(config, work)
        from trainer.objectives import objective_for

        unit = objective_for(config).unit
        _say(f"Data: {len(data.train)} training and {len(data.validation)} validation {unit}; "
             f"running AutoTrain {VERSION} ({work / 'autotrain.yml'}) ...")
        log = AutoTrainLog(work / "autotrain.log")
        run_autotrain(python, work, config, log)
        summary = collect(config, run_dir, work, tokenizer, data, log)
        shutil.rmtree(work / project_name(config.output.dir), ignore_errors=True)  # its copy is now in model/
        _say(f"Done in {summary.train_seconds / 60:.1f} min of AutoTrain training. Run directory: {run_dir}")
        if config.output.push_to_hub is not None:
            from trainer.hub import push_run

            target = config.output.push_to_hub
            _say(f"Uploaded to {push_run(run_dir, target.repo_id, target.private)}")
        return run_dir
