"""Presets are the shipped example configs in configs/, each commented for a newcomer."""
from __future__ import annotations

from pathlib import Path

from trainer.errors import UserError

PRESETS = {
    "cpu-demo": "quickstart.yaml",
    "gpu-lora": "llama3.2-3b-lora-gpu.yaml",
    "gpu-qlora": "llama3.1-8b-qlora-gpu.yaml",
    "full": "llama3.2-1b-full-gpu.yaml",
}


def configs_dir() -> Path:
    """configs/ is packed into the wheel as trainer/configs; in a source checkout it is beside the package."""
    packaged = Path(__file__).resolve().parent.parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent.parent / "configs"


def preset_text(name: str) -> str:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return (configs_dir() / PRESETS[name]).read_text(encoding="utf-8")
