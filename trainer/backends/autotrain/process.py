"""Running AutoTrain: `autotrain --config autotrain.yml` as a subprocess in its own environment, its log streamed
and followed (the losses it logs, the failures it logs but does not exit with), Ctrl-C and SIGTERM passed on."""
from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainer.backends.autotrain.environment import bin_path, child_env, tail_of
from trainer.config import Config
from trainer.errors import RunStopped, UserError

LOG_PREFIX = "[autotrain] "
FAILURE_MARKER = "has failed due to an exception"  # AutoTrain's @monitor logs this and the process still exits 0


class AutoTrainLog:
    """Follows AutoTrain's output: the loss lines (logged dicts), the failure it logs but does not exit with."""

    _DICT = re.compile(r"(\{'(?:loss|train_runtime|eval_loss)'.*\})\s*$")

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8")
        self.losses: list[dict] = []
        self.final: dict = {}
        self.failure: list[str] | None = None

    def feed(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()
        if self.failure is not None and len(self.failure) < 60:
            self.failure.append(line)
        if FAILURE_MARKER in line:
            self.failure = [line]
        match = self._DICT.search(line) if "on_log" in line else None  # its logger's line, not the progress bar's copy
        if match:
            try:
                logged = ast.literal_eval(match.group(1))
            except (ValueError, SyntaxError):
                return
            if "train_runtime" in logged:
                self.final = logged
            elif "loss" in logged:
                self.losses.append(logged)

    def close(self) -> None:
        self.file.close()


def run_autotrain(python: Path, work: Path, config: Config, log: AutoTrainLog) -> None:
    """`autotrain --config autotrain.yml` in `work`, as an argument list (no shell), in its own process group."""
    cmd = [str(bin_path(python, "autotrain")), "--config", "autotrain.yml"]
    child = subprocess.Popen(cmd, cwd=work, env=child_env(python, config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1, errors="replace", start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        assert child.stdout is not None  # stdout=PIPE
        for line in child.stdout:
            line = line.rstrip("\n")
            log.feed(line)
            if line.strip():
                print(LOG_PREFIX + line, file=sys.stderr, flush=True)
        code = child.wait()
    except KeyboardInterrupt:
        _stop_group(child)
        raise RunStopped("stopped: AutoTrain and its training processes were ended. AutoTrain cannot resume a run; "
                        "start it again with the same command.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.close()
    if code != 0:
        raise UserError(f"AutoTrain exited with status {code}. The end of its log ({work / 'autotrain.log'}):\n{tail_of(chr(10).join(log.failure or []) or _last_lines(work / 'autotrain.log'))}")
    if log.failure is not None:
        raise UserError(f"AutoTrain reported a failure (and exited 0). From its log ({work / 'autotrain.log'}):\n{_failure_text(log.failure)}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_group(child: subprocess.Popen) -> None:
    """Ctrl-C / SIGTERM: stop AutoTrain and the accelerate/python processes it started (the whole group)."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_lines(path: Path) -> str:
    return tail_of(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else ""


def _failure_text(lines: list[str]) -> str:
    """The exception AutoTrain logged: its last traceback line says what went wrong; keep a few lines around it."""
    text = [line for line in lines if line.strip()]
    errors = [line for line in text if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", line.strip())]
    head = errors[-1].strip() if errors else text[0].strip()
    return head + "\n" + tail_of("\n".join(text), 12)
