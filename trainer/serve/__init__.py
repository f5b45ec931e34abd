"""`trainer serve`: runs' models (or a GGUF file) behind an OpenAI-compatible HTTP API.

Engines: `llama.cpp` (the default where llama.cpp is set up): llama.cpp's own server, llama-server, as a child
process per base model, batching concurrent requests continuously, with every LoRA run on that base as an adapter
chosen per request by model name (trainer.serve.llamaserver, trainer.serve.runs), behind a thin router of ours
(trainer.serve.router); `transformers`, the engine of last resort (exactly the answers `trainer generate` gives, one
run, one request at a time; needs nothing beyond trainer); and `vllm` for GPUs (vLLM's own OpenAI server, with the
runs as LoRA modules over their base).
"""
from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError

ENGINES = ("auto", "llama.cpp", "transformers", "vllm")


@dataclass(frozen=True)
class ServeOptions:
    runs: tuple[Path, ...] = ()  # run directories, or folders of them
    gguf: Path | None = None
    engine: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    quant: str = "q8_0"
    max_tokens: int = 2048
    gpus: int | None = None  # vllm: tensor-parallel size (None: every visible GPU)
    body_timeout: float = 30.0  # seconds a request body has to arrive
    context: int | None = None  # llama.cpp: tokens per slot, prompt and answer (None: 4096, at most the model's)
    parallel: int | None = None  # llama.cpp: requests batched at once per engine (None: from the cores and memory)
    threads: int | None = None  # llama.cpp: CPU threads per engine (None: every core)
    merged: bool = False  # llama.cpp: serve LoRA runs merged, each from its own GGUF, instead of as adapters

    @property
    def run(self) -> Path | None:
        """The first run (the transformers engine and vLLM's single-model paths serve one)."""
        return self.runs[0] if self.runs else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(options: ServeOptions) -> None:
    if bool(options.runs) == (options.gguf is not None):
        raise UserError("say what to serve: --run DIR (a finished run directory, or a folder of them; several --run are "
                        "allowed) or --gguf FILE.")
    if options.gguf is not None and not options.gguf.is_file():
        raise UserError(f"--gguf {options.gguf}: no such file.")
    if options.gguf is not None and options.engine in ("transformers", "vllm"):
        raise UserError(f"--engine {options.engine} serves a run directory; a GGUF file is served by llama.cpp (--engine llama.cpp).")
    if options.runs:
        from trainer.serve.runs import expand_runs

        runs = expand_runs(options.runs)
        if len(runs) > 1 and options.engine == "transformers":
            raise UserError(f"--engine transformers serves one run ({len(runs)} were given); several runs are served by "
                            "llama.cpp (--engine llama.cpp, the default where it is set up) or vLLM (--engine vllm).")
    if not is_loopback(options.host) and not options.api_key:
        raise UserError(f"--host {options.host} lets other machines reach the server: set an API key with the environment variable "
                        "TRAINER_API_KEY or --api-key-file FILE (clients send it as Authorization: Bearer KEY).")


def choose_engine(options: ServeOptions) -> str:
    if options.engine != "auto":
        return options.engine
    if options.gguf is not None:
        return "llama.cpp"
    from trainer.export.llamacpp import find

    if find() is not None:
        return "llama.cpp"
    print("note: serving with transformers, one request at a time; `trainer backends setup llama.cpp` once (8-25 minutes) "
          "makes `trainer serve` batch concurrent requests with llama.cpp's server, several times faster on a CPU.",
          file=sys.stderr)
    return "transformers"


def serve(options: ServeOptions) -> None:
    check_options(options)
    engine_name = choose_engine(options)
    if engine_name == "vllm":
        from trainer.serve.vllm import run_vllm

        run_vllm(options)
        return
    try:
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UserError(f"`trainer serve` needs {exc.name}: pip install 'trainer[serve]'") from None
    if engine_name == "llama.cpp":
        serve_llamacpp(options)
    else:
        serve_transformers(options)


def serve_transformers(options: ServeOptions) -> None:
    """One run through transformers, one request at a time (trainer.serve.engines.Worker), in our own app."""
    from trainer.serve.app import ServeLimits, create_app
    from trainer.serve.engines import TransformersEngine, Worker
    from trainer.serve.runs import expand_runs
    from trainer.serve.server import run_server

    if options.gguf is not None:
        raise UserError("--engine transformers serves a run directory; a GGUF file is served by llama.cpp (--engine llama.cpp).")
    runs = expand_runs(options.runs)
    if len(runs) > 1:  # asked for, or chosen because llama.cpp is not set up: never serve only the first run silently
        raise UserError(f"transformers serves one run ({len(runs)} were given); several runs are served by llama.cpp "
                        "(`trainer backends setup llama.cpp` once, then --engine llama.cpp) or vLLM (--engine vllm).")
    engine = TransformersEngine.of_run(runs[0])
    worker = Worker(engine)
    app = create_app(engine, options.api_key, ServeLimits(max_tokens=options.max_tokens, body_seconds=options.body_timeout), worker)
    _banner([engine.model_id], "transformers", options)
    run_server(app, worker, options.host, options.port)


def serve_llamacpp(options: ServeOptions) -> None:
    """llama-server child processes (one per base GGUF) behind trainer's router (trainer.serve.router)."""
    from trainer.demo import cache_dir
    from trainer.serve.app import ServeLimits
    from trainer.serve.llamaserver import EngineProcess, EngineSpec, Model, server_binary, size_engine
    from trainer.serve.router import Route, create_router
    from trainer.serve.runs import expand_runs, plan_engines
    from trainer.serve.server import run_router

    binary = server_binary()
    if options.gguf is not None:
        specs = [EngineSpec(options.gguf, [Model(options.gguf.stem)])]
    else:
        specs = plan_engines(expand_runs(options.runs), options.quant, options.merged)
    engines = []
    try:
        for spec in specs:
            size_engine(spec, options.context, options.parallel, options.threads)
            engine = EngineProcess(spec, binary, cache_dir() / "serve-logs" / f"{spec.gguf.stem}.log")
            engines.append(engine)
            adapters = f", {len(spec.adapters)} LoRA adapter(s) over {spec.gguf.name}" if spec.adapters else f" ({spec.gguf.name})"
            print(f"Starting llama-server for {spec.names}{adapters}: {spec.slots} parallel slots of {spec.context} tokens, "
                  f"{spec.threads} threads (log: {engine.log}) ...", file=sys.stderr, flush=True)
            engine.start()
            engine.supervise()
        routes = {model.name: Route(model.name, engine, model.lora) for engine in engines for model in engine.spec.models}
        limits = ServeLimits(max_tokens=options.max_tokens, body_seconds=options.body_timeout)
        _banner(list(routes), "llama.cpp (llama-server)", options)
        run_router(create_router(routes, options.api_key, limits), options.host, options.port)
    finally:
        for engine in engines:
            engine.stop()


def _banner(names: list[str], engine: str, options: ServeOptions) -> None:
    where = f"http://{options.host}:{options.port}/v1"
    print(f"Serving {', '.join(names)} with {engine} at {where} (OpenAI-compatible; Ctrl-C stops).\n"
          f"  from openai import OpenAI; client = OpenAI(base_url={where!r}, api_key={'<your key>' if options.api_key else repr('none')})\n"
          f"  client.chat.completions.create(model={names[0]!r}, messages=[{{'role': 'user', 'content': '...'}}])",
          file=sys.stderr, flush=True)


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
