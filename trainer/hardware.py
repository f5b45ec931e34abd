"""What this machine can do, for the rules that depend on it.

`Hardware.detect()` asks PyTorch and is exact; it is used when a run starts.
`Hardware.guess()` imports nothing heavy (so `trainer validate` stays fast) and
is only used to warn early.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    cuda_bf16: bool
    mps: bool

    @classmethod
    def detect(cls) -> "Hardware":
        import torch

        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
            mps=bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        )

    @classmethod
    def guess(cls) -> "Hardware":
        cuda = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
        mps = platform.system() == "Darwin" and platform.machine() == "arm64"
        return cls(cuda=cuda, cuda_bf16=cuda, mps=mps)

    def device(self, wanted: str = "auto") -> str:
        if wanted != "auto":
            return wanted
        return "cuda" if self.cuda else "mps" if self.mps else "cpu"


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
