"""AutoTrain Advanced's own environment: a virtual environment beside trainer's, set up once and checked before a run.

AutoTrain 0.8.36 pins transformers 4.48, peft 0.14, trl 0.13 and more, so it
cannot live beside trainer's own dependencies (process.py runs it as a
subprocess with the environment variables `child_env` gives it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from trainer.config import Config
from trainer.errors import UserError

VERSION = "0.8.36"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def default_venv() -> Path:
    """TRAINER_AUTOTRAIN_VENV (the Docker image sets it), else <trainer cache>/autotrain-<version>."""
    from trainer.demo import cache_dir

    if os.environ.get("TRAINER_AUTOTRAIN_VENV"):
        return Path(os.environ["TRAINER_AUTOTRAIN_VENV"]).expanduser()
    return cache_dir() / f"autotrain-{VERSION}"


def autotrain_python(config: Config | None = None) -> Path:
    configured = config.backend.autotrain.python if config is not None else None
    return Path(configured).expanduser() if configured else default_venv() / "bin" / "python"


def bin_path(python: Path, name: str) -> Path:
    return python.parent / name


def environment_problem(python: Path) -> str | None:
    """Why the AutoTrain environment at `python` cannot run, or None when `autotrain --help` works."""
    if not python.exists():
        return f"AutoTrain's environment is not set up ({python} does not exist). Create it once with: trainer backends setup autotrain"
    if not bin_path(python, "autotrain").exists():
        return f"{python.parent} has no `autotrain` command. Run: trainer backends setup autotrain"
    return None


def setup_environment(venv: Path | None = None, say: Callable[[str], None] = _say, gpu: bool | None = None) -> Path:
    """Create AutoTrain's virtual environment, install the pinned version, repair torchvision, check it starts.

    gpu: install the CUDA build of torch (None: when nvidia-smi is present; a Docker build for GPUs has none)."""
    venv = Path(venv or default_venv()).expanduser()
    python = venv / "bin" / "python"
    if environment_problem(python) is None and _autotrain_help(python).returncode == 0:
        say(f"AutoTrain {VERSION} is already set up: {venv / 'bin' / 'autotrain'}")
        return python
    if not python.exists():
        say(f"Creating a virtual environment for AutoTrain {VERSION} in {venv} ...")
        _check_call([sys.executable, "-m", "venv", str(venv)], "could not create the virtual environment")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if not (gpu if gpu is not None else shutil.which("nvidia-smi") is not None):
        # Without an NVIDIA GPU, install the CPU build trainer itself runs on, and hold it there: AutoTrain does not
        # pin torch, but torchvision (through timm) pins an exact torch, and pip would otherwise replace the CPU
        # build with the newest CUDA build and several GB of CUDA packages this machine cannot use.
        import torch

        version = torch.__version__.split("+")[0]
        say(f"Installing torch {version} (CPU build) into it ...")
        _check_call(pip + [f"torch=={version}"], "could not install torch")
        constraints = venv / "constraints.txt"
        constraints.write_text(f"torch=={version}\n")
        pip += ["--constraint", str(constraints)]
    say(f"Installing autotrain-advanced=={VERSION} (a few minutes) ...")
    _check_call(pip + [f"autotrain-advanced=={VERSION}"], "could not install autotrain-advanced")
    repaired = repair_torchvision(python)
    if repaired:
        say(repaired)
    help_run = _autotrain_help(python)
    if help_run.returncode != 0:
        raise UserError(f"AutoTrain was installed in {venv} but `autotrain --help` fails:\n{tail_of(help_run.stderr or help_run.stdout)}")
    say(f"AutoTrain {VERSION} is ready: {venv / 'bin' / 'autotrain'}")
    return python


def _autotrain_help(python: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_path(python, "autotrain")), "--help"], capture_output=True, text=True, env=child_env(python), timeout=600)


def repair_torchvision(python: Path) -> str | None:
    """PyPI's torchvision is built for PyPI's (CUDA) torch; beside a CPU-only torch its compiled operators fail to
    load, and AutoTrain's imports (through accelerate and timm) fail with them. LLM training needs neither, so a
    torchvision that does not import is removed, with timm, which cannot import without it."""
    probe = subprocess.run([str(python), "-c", "import torchvision"], capture_output=True, text=True, env=child_env(python))
    if probe.returncode == 0 or "No module named 'torchvision'" in probe.stderr:
        return None
    reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "import failed"
    _check_call([str(python), "-m", "pip", "uninstall", "--yes", "torchvision", "timm"], "could not remove torchvision")
    return (f"Removed torchvision and timm from AutoTrain's environment: PyPI's torchvision does not work with the "
            f"CPU-only torch ({reason}), and LLM fine-tuning uses neither.")


def _check_call(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{what}: `{' '.join(cmd)}` exited with {done.returncode}:\n{tail_of(done.stderr or done.stdout)}")


def tail_of(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def child_env(python: Path, config: Config | None = None) -> dict:
    """AutoTrain's environment variables: its venv first on PATH (it launches `accelerate` by name), nothing of ours
    on PYTHONPATH, and the Hub, token and CUDA settings passed through."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env["PAUSE_ON_FAILURE"] = "0"  # AutoTrain would otherwise try to pause a Hugging Face Space on failure
    if shutil.which("nvidia-smi") is None and "OMP_NUM_THREADS" not in env:
        # On a CPU, `accelerate launch --cpu` (which AutoTrain runs) sets OMP_NUM_THREADS=1 unless it is already set:
        # one core of however many there are. Give it the cores this process may use, as trainer's loop has.
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    if config is not None:
        env["ALLOW_REMOTE_CODE"] = "true" if config.model.trust_remote_code else "false"
    return env
