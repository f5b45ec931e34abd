"""Messages for the person at the terminal: notes and warnings go to stderr, results to stdout."""
from __future__ import annotations

import sys


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
