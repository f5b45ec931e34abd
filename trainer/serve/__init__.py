"""`trainer serve`: a run's model (or any GGUF file) behind an OpenAI-compatible HTTP API.

Engines: `llama.cpp` on the run's exported GGUF (the default where llama.cpp is set up: the fastest on a
CPU, see docs/benchmarks.md), `transformers` (exactly the answers `trainer generate` gives; needs
nothing beyond trainer), and `vllm` for GPUs and many users (vLLM's own OpenAI server, started with the
base model and the LoRA adapter).
"""
from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.serve.engines import Engine

ENGINES = ("auto", "llama.cpp", "transformers", "vllm")


@dataclass(frozen=True)
class ServeOptions:
    run: Path | None
    gguf: Path | None
    engine: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    quant: str = "q8_0"
    max_tokens: int = 2048
    gpus: int | None = None  # vllm: tensor-parallel size (None: every visible GPU)
    body_timeout: float = 30.0  # seconds a request body has to arrive


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(options: ServeOptions) -> None:
    if (options.run is None) == (options.gguf is None):
        raise UserError("say what to serve: --run DIR (a finished run directory) or --gguf FILE.")
    if options.gguf is not None and not options.gguf.is_file():
        raise UserError(f"--gguf {options.gguf}: no such file.")
    if options.gguf is not None and options.engine in ("transformers", "vllm"):
        raise UserError(f"--engine {options.engine} serves a run directory; a GGUF file is served by llama.cpp (--engine llama.cpp).")
    if options.run is not None:
        from trainer.generate import finished_run

        finished_run(options.run)
    if not is_loopback(options.host) and not options.api_key:
        raise UserError(f"--host {options.host} lets other machines reach the server: set an API key with the environment variable "
                        "TRAINER_API_KEY or --api-key-file FILE (clients send it as Authorization: Bearer KEY).")


def choose_engine(options: ServeOptions) -> str:
    if options.engine != "auto":
        return options.engine
    if options.gguf is not None:
        return "llama.cpp"
    from trainer.export.llamacpp import find, python_binding_problem

    if find() is not None and python_binding_problem() is None:
        return "llama.cpp"
    print("note: serving with transformers; `trainer backends setup llama.cpp` once (about 8 minutes) makes "
          "`trainer serve` answer several times faster on a CPU.", file=sys.stderr)
    return "transformers"


def build_engine(options: ServeOptions, engine: str) -> Engine:
    from trainer.serve.engines import LlamaCppEngine, TransformersEngine, run_template

    if options.gguf is not None:
        return LlamaCppEngine(options.gguf, str(options.gguf), None, options.gguf.stem)
    run = options.run
    assert run is not None  # check_options: a run or a GGUF file
    if engine == "transformers":
        return TransformersEngine.of_run(run)
    from trainer.export.gguf import run_name

    gguf = run / "export" / f"{run_name(run)}-{options.quant}.gguf"
    if not gguf.is_file() or gguf.stat().st_mtime < (run / "model").stat().st_mtime:
        from trainer.export.gguf import export_gguf

        export_gguf(run, options.quant)
    loaded_template = run_template(run)
    return LlamaCppEngine(gguf, str(run / "model"), loaded_template, run_name(run))


def serve(options: ServeOptions) -> None:
    check_options(options)
    engine_name = choose_engine(options)
    if engine_name == "vllm":
        from trainer.serve.vllm import run_vllm

        run_vllm(options)
        return
    try:
        from trainer.serve.app import ServeLimits, create_app
        from trainer.serve.server import run_server
    except ModuleNotFoundError as exc:
        raise UserError(f"`trainer serve` needs {exc.name}: pip install 'trainer[serve]'") from None
    from trainer.serve.engines import Worker

    engine = build_engine(options, engine_name)
    worker = Worker(engine)
    app = create_app(engine, options.api_key, ServeLimits(max_tokens=options.max_tokens, body_seconds=options.body_timeout), worker)
    where = f"http://{options.host}:{options.port}/v1"
    print(f"Serving {engine.model_id} with {engine_name} at {where} (OpenAI-compatible; Ctrl-C stops).\n"
          f"  from openai import OpenAI; client = OpenAI(base_url={where!r}, api_key={'<your key>' if options.api_key else repr('none')})\n"
          f"  client.chat.completions.create(model={engine.model_id!r}, messages=[{{'role': 'user', 'content': '...'}}])",
          file=sys.stderr, flush=True)
    run_server(app, worker, options.host, options.port)


def api_key_from(arg: str | None, file: str | None = None) -> str | None:
    """The API key: from --api-key-file, --api-key (with a warning: a command line is public), or TRAINER_API_KEY."""
    if file is not None:
        try:
            key = Path(file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--api-key-file {file}: {exc.strerror or exc}") from None
        if not key:
            raise UserError(f"--api-key-file {file} is empty: write the key in it")
        return key
    if arg:
        print("warning: --api-key puts the key on the command line, where every user of this machine can read it (ps); "
              "set TRAINER_API_KEY or use --api-key-file FILE instead.", file=sys.stderr)
    return arg or os.environ.get("TRAINER_API_KEY") or None
