"""`trainer` as a child process that outlives whoever started it: the web UI's jobs (ui/jobs.py) and the fine-tuning
API's (trainer/api/queue.py) both run this way.

The child is a small wrapper started in its own session, so closing the browser, restarting the UI or killing the
API service does not stop the training; it runs `trainer` at a lower CPU priority and writes trainer's exit code to a
file, so the outcome is known even to a parent that restarted meanwhile. SIGTERM to the wrapper is passed on to
trainer, which saves a checkpoint and exits 3 (EXIT_STOPPED). What a parent learns of the run comes from files
(metrics.jsonl, the exit code), never from the printed log.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

WRAPPER = """
import os, signal, subprocess, sys
os.nice(10)  # training yields the CPU to the web server, so the UI or the API stays responsive while a job runs
child = subprocess.Popen({cmd!r})
signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
code = child.wait()
with open({exit_file!r}, "w") as handle:
    handle.write(str(code))
sys.exit(code)
"""


def start_trainer(args: list[str], exit_file: Path, log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start `python -m trainer ARGS` under the wrapper, its output appended to `log`; returns the wrapper's pid."""
    code = WRAPPER.format(cmd=[sys.executable, "-m", "trainer", *args], exit_file=str(exit_file))
    exit_file.unlink(missing_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n$ trainer {' '.join(args)}\n")
        handle.flush()
        process = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                   start_new_session=True)
    threading.Thread(target=process.wait, daemon=True).start()  # reap it, so it does not linger as a zombie
    return process.pid


def alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether process `pid` runs (a zombie does not). With `marker`, also that its command line holds it: after a
    restart of the parent, a pid written down before may have been reused by another program."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child not yet reaped is a zombie: not alive
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
        return marker is None or marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def stop(pid: int | None) -> None:
    """SIGTERM to the wrapper, which passes it on to trainer: a checkpoint is saved and trainer exits 3."""
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def exit_code(exit_file: Path) -> int | None:
    """The code the wrapper wrote; None if it wrote none (still running, or killed itself)."""
    try:
        return int(exit_file.read_text().strip())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file that a running process appends to (a line being written is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
