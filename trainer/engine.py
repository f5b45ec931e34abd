"""A run's lifecycle: check the machine, pick the backend, train, report where the result is."""
from __future__ import annotations

import sys
from pathlib import Path

from trainer import distributed
from trainer.backends import get_backend
from trainer.config import Config
from trainer.config.rules import check_hardware
from trainer.errors import Problem, UserError
from trainer.hardware import Hardware


def preflight(config: Config, config_file: str):
    """Everything that can be known before loading a model, checked before loading it."""
    found = check_hardware(config, Hardware.detect())
    backend = None if found else get_backend(config.backend.name)
    found += backend.check(config) if backend else []
    if found:
        problems = [Problem(message, ".".join(map(str, path)), config_file) for path, message in found]
        raise UserError(problems, title=f"{config_file}: {len(problems)} problem(s) with running this config here; nothing was run.")
    return backend


def run(config: Config, config_file: str, resume: bool = False, argv: list[str] | None = None) -> Path:
    backend = preflight(config, config_file)
    run_dir = Path(config.output.dir).expanduser()
    if config.distributed.strategy != "none" and not distributed.is_launched():
        return _relaunch(config, run_dir, argv if argv is not None else sys.argv[1:])
    run_dir = backend.train(config, run_dir, resume or config.resume == "auto")
    if config.evaluation.after_training and distributed.is_main_process():
        from trainer.evaluation.report import write_report
        from trainer.evaluation.runner import evaluate_run

        evaluation = evaluate_run(config, run_dir, say=lambda text: print(text, file=sys.stderr, flush=True))
        print(write_report(run_dir, evaluation, config))
    return run_dir


def _relaunch(config: Config, run_dir: Path, argv: list[str]) -> Path:
    """Start one trainer process per device with the same arguments, and wait for them (they do the whole run)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    processes = distributed.num_processes(config, gpus)
    if gpus:
        import subprocess

        command = distributed.launch_command(config, argv, run_dir, gpus)
        print(f"Starting {config.distributed.strategy} training on {processes} GPUs: accelerate launch "
              f"--config_file {run_dir / 'launch' / 'accelerate.yaml'} ...", file=sys.stderr, flush=True)
        code = distributed.run_together([subprocess.Popen(command)])
    else:
        print(f"Starting {config.distributed.strategy} training in {processes} CPU processes ...", file=sys.stderr, flush=True)
        code = distributed.run_local_processes(processes, argv)
    if code != 0:
        sys.exit(code if code > 0 else 2)  # the processes have said what went wrong
    return run_dir

