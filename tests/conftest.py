import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_trainer(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `trainer` command line in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def in_repo(monkeypatch):
    """Relative paths in configs (data/recipes/...) are read from the repository root."""
    monkeypatch.chdir(REPO)
    return REPO


MINIMAL = """\
model:
  name_or_path: gpt2
data:
  train: data/recipes/train.jsonl
training:
  epochs: 1
"""
