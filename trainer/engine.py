"""A run's lifecycle: check the machine, pick the backend, train, and say what came of it (a `RunResult`).

Exit codes of `trainer --config` (trainer/errors.py, README.md; the UI and the multi-process launcher read them):
  0    EXIT_OK: the run finished (or, in a launching or non-main process, its part of it did)
  2    EXIT_BAD_INPUT: a problem with the config, the data or the machine, said before or during the run
  3    EXIT_STOPPED: a stop (Ctrl-C, SIGTERM) ended the run as asked, after saving a checkpoint (continue it with
       --resume); every process of a multi-process run exits 3, and so does the launcher of each node (CPUs and
       GPUs alike: trainer/distributed.py's `run_node`). The AutoTrain backend exits
       3 too, but it cannot resume: --resume starts it again from the beginning.
  130  EXIT_INTERRUPTED: a second Ctrl-C ended the run at once, without a checkpoint
Any other status is not trainer's own: 1 is an uncaught exception (a bug); a process killed by a signal has none (a
shell shows 128 + the signal's number).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer import distributed
from trainer.backends import Backend, get_backend
from trainer.config import Config
from trainer.config.rules import check_hardware
from trainer.errors import EXIT_OK, EXIT_STOPPED, Problem, RunStopped, UserError
from trainer.hardware import Hardware
from trainer.rundir import SUMMARY_FILE, RunSummary


@dataclass(frozen=True)
class RunResult:
    """What came of `run`, for the CLI (and anything else that starts runs in-process)."""

    run_dir: Path
    stopped: bool = False  # a stop ended it after a checkpoint; `message` says where and how to go on
    message: str = ""
    reports: bool = True  # this process speaks for the run: not a non-main rank, nor the process that launched them
    summary: RunSummary | None = None  # summary.json of a finished run, as this process wrote it

    @property
    def exit_code(self) -> int:
        return EXIT_STOPPED if self.stopped else EXIT_OK


def problems_before_running(config: Config, config_file: str, machine: bool = True) -> list[Problem]:
    """Everything that can be known without loading a model: this machine's (`machine`) and the backend's."""
    found = check_hardware(config, Hardware.detect()) if machine else []
    backend = get_backend(config.backend.name)
    if machine and not found:
        found += backend.check_machine(config)
    found += backend.check(config)
    return [Problem(message, ".".join(map(str, path)), config_file) for path, message in found]


def preflight(config: Config, config_file: str) -> Backend:
    """Everything that can be known before loading a model, checked before loading it."""
    problems = problems_before_running(config, config_file)
    if problems:
        raise UserError(problems, title=f"{config_file}: {len(problems)} problem(s) with running this config here; nothing was run.")
    return get_backend(config.backend.name)


def run(config: Config, config_file: str, resume: bool = False, argv: list[str] | None = None, node_rank: int | None = None) -> RunResult:
    """`node_rank`: which machine this is, in a run on several (distributed.nodes; else NODE_RANK from the environment)."""
    backend = preflight(config, config_file)
    run_dir = Path(config.output.dir).expanduser()
    if distributed.is_launched():
        distributed.die_with_launcher()
        distributed.check_launched_nodes(config.distributed)
    elif config.distributed.strategy != "none":
        _relaunch(config, config_file, run_dir, argv if argv is not None else sys.argv[1:], node_rank)
        return RunResult(run_dir, reports=False)  # the launched processes did the run and said how it went
    resuming = resume or config.resume == "auto" or distributed.restarted()  # a restart goes on from the last checkpoint
    resumed = resuming and _has_checkpoint(run_dir)
    try:
        run_dir = backend.train(config, run_dir, resuming)
    except RunStopped as stop:
        if distributed.is_launched():
            distributed.stay_until_done()
        return RunResult(run_dir, stopped=True, message=stop.render(), reports=distributed.is_main_process())
    if not distributed.is_main_process():
        return RunResult(run_dir, reports=False)
    summary = RunSummary.read(run_dir)
    if summary is not None and not resumed:  # a resumed run's train_seconds include the loop's time before the resume
        import psutil  # accelerate's dependency

        process_started = psutil.Process().create_time()
        if (run_dir / SUMMARY_FILE).stat().st_mtime >= process_started:  # else an earlier process's run, found finished
            # from the start of the process (imports included) to now, less the training loop
            _record_seconds(config, "overhead", time.time() - process_started - summary.train_seconds, summary)
    if config.evaluation.after_training:
        from trainer.evaluation.report import write_report
        from trainer.evaluation.runner import evaluate_run

        started = time.perf_counter()
        evaluation = evaluate_run(config, run_dir, say=lambda text: print(text, file=sys.stderr, flush=True))
        print(write_report(run_dir, evaluation))
        if summary is not None:
            _record_seconds(config, "evaluation", time.perf_counter() - started, summary)
    return RunResult(run_dir, summary=summary)


def _has_checkpoint(run_dir: Path) -> bool:
    from trainer import checkpoint

    return bool(checkpoint.complete_checkpoints(run_dir))


def _record_seconds(config: Config, part: str, seconds: float, summary: RunSummary) -> None:
    """What a run spent besides its training loop ("overhead": loading the model and data, saving; "evaluation": the
    evaluation after training), kept beside the measured throughput for `trainer plan`'s estimate of the next run,
    with the length of the run's training (a trial of a few steps does not replace a full run's times)."""
    from trainer.throughput import Measurement, record, throughput_key

    if seconds > 0:
        record(f"{throughput_key(config)}|{part}_seconds", Measurement(seconds, summary.steps, summary.trained_tokens))


def _relaunch(config: Config, config_file: str, run_dir: Path, argv: list[str], node_rank: int | None) -> None:
    """Start this machine's trainer processes (one per device) with the same arguments, and wait for them (they do
    the whole run, with the other nodes' where there are several)."""
    import json

    import torch

    from trainer.models import mixed_precision

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    launch = distributed.node_launch(config, gpus, node_rank, config_file)
    if config.distributed.strategy == "deepspeed":  # a record of what each process hands the engine
        (run_dir / "launch").mkdir(parents=True, exist_ok=True)
        settings = distributed.deepspeed_config(config.training, config.distributed.zero_stage, mixed_precision(config, "cuda" if gpus else "cpu"))
        (run_dir / "launch" / "deepspeed.json").write_text(json.dumps(settings, indent=2))
    unit = ("GPU" if gpus else "CPU process") + ("" if launch.processes == 1 else "s" if gpus else "es")
    where = f"{launch.processes} {unit}"
    if launch.nodes != (1, 1):
        low, high = launch.nodes
        where += (f" on node {launch.node_rank} of {low if low == high else f'{low} to {high}'}, meeting at {launch.endpoint}")
    print(f"Starting {config.distributed.strategy} training in {where} ...", file=sys.stderr, flush=True)
    code = distributed.run_node(launch, argv)
    if code != EXIT_OK:  # the processes have said what went wrong, or that they stopped (EXIT_STOPPED)
        sys.exit(code)
