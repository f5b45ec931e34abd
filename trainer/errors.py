"""Problems with what the user gave us, and the one exception that carries them.

A `UserError` is printed as its problems, never as a traceback, and the CLI exits 2 (EXIT_BAD_INPUT).
A `RunStopped` is the run ending on a stop that was asked for (engine.run reports it as its outcome, exit 3).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# Exit codes of `trainer` (README.md, "What a run gives you", and docs/run-directory.md; the table is in engine.py); the UI and the launcher of a
# multi-process run read them. 1 stays Python's own (an uncaught exception, a bug) and 2 argparse's (bad arguments).
EXIT_OK = 0
EXIT_BAD_INPUT = 2  # a problem with the config, the data or the machine; nothing (more) was run
EXIT_STOPPED = 3  # a stop (Ctrl-C, SIGTERM) ended the run as asked, after saving a checkpoint; --resume continues it
EXIT_INTERRUPTED = 130  # a second Ctrl-C ended the run at once

# How a stopped run is continued, said as it stops: a launcher with its own way (the UI's Resume button) puts its
# sentence in this variable of the runs it starts.
RESUME_HINT = "TRAINER_RESUME_HINT"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input: what, where, and how to fix it."""

    message: str
    path: str = ""  # dotted config path such as "training.learning_rate", or "" for the whole file
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def location(self) -> str:
        parts = [p for p in (self.file, self.line, self.column) if p is not None]
        return ":".join(str(p) for p in parts)

    def __str__(self) -> str:
        head = self.location()
        body = f"{self.path}: {self.message}" if self.path else self.message
        return f"{head}: {body}" if head else body


class UserError(Exception):
    """Bad input from the user. Carries every problem found, so all are reported at once."""

    def __init__(self, problems: list[Problem] | str, title: str | None = None):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems = list(problems)
        self.title = title
        super().__init__(self.render())

    def render(self, limit: int = 50) -> str:
        lines = []
        if self.title:
            lines.append(self.title)
        shown = self.problems[:limit]
        for problem in shown:
            text = str(problem)
            lines.append(("  " + text.replace("\n", "\n    ")) if self.title else text)
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more problems")
        return "\n".join(lines)


class RunStopped(UserError):
    """A stop (Ctrl-C, SIGTERM) ended the run as asked; the message says what was kept and how to go on."""


def resume_hint() -> str:
    """The sentence that says how to continue a stopped run: the launcher's (RESUME_HINT), or the command line's."""
    return os.environ.get(RESUME_HINT) or "Continue with the same command plus --resume."
