"""Commands that stay up: serve (an OpenAI-compatible API) and ui (the Gradio web UI)."""
from __future__ import annotations

import argparse

from trainer.commands import Command, SubParsers
from trainer.errors import UserError


def _add_serve(sub: SubParsers) -> None:
    p = sub.add_parser("serve", help="serve runs' models over an OpenAI-compatible HTTP API",
                       description="Serve runs' models (or a GGUF file) at /v1/chat/completions, /v1/completions, /v1/models and "
                       "/health, for the official OpenAI clients and anything that speaks their API; clients choose a run by its "
                       "name (model=...). With llama.cpp, LoRA runs on one base share one copy of it in memory, as adapters "
                       "chosen per request. Listens on 127.0.0.1 unless --host says otherwise; any other host needs an API key.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", metavar="DIR", action="append",
                      help="a run directory to serve, or a folder of them; repeat it to serve several runs")
    what.add_argument("--gguf", metavar="FILE", help="a GGUF file to serve (with llama.cpp)")
    from trainer.serve import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto (llama.cpp where it is set up, else transformers), llama.cpp (llama-server on the runs' GGUFs, "
                   "converted first if missing), transformers (one run, exactly trainer generate's answers, one request at a "
                   "time), vllm (GPUs: vLLM's server with the runs as LoRA modules)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key-file", metavar="FILE", help="a file holding the API key clients must send as Authorization: "
                     "Bearer KEY (default: the environment variable TRAINER_API_KEY); needed for any host but this machine")
    key.add_argument("--api-key", metavar="KEY", help="the API key itself; every user of this machine can read it in `ps`: "
                     "prefer TRAINER_API_KEY or --api-key-file")
    p.add_argument("--quant", default="q8_0", metavar="TYPE", help="llama.cpp engine: the GGUF type of the runs' models (default q8_0)")
    p.add_argument("--parallel", type=int, metavar="N", help="llama.cpp engine: requests batched at once per base model "
                   "(default: 4 per core, 4 to 32, as many as a quarter of the free memory holds)")
    p.add_argument("--context", type=int, metavar="TOKENS", help="llama.cpp engine: tokens per request, prompt and answer "
                   "(default 4096, at most the model's)")
    p.add_argument("--threads", type=int, metavar="N", help="llama.cpp engine: CPU threads per base model (default: every core)")
    p.add_argument("--merged", action="store_true", help="llama.cpp engine: serve each LoRA run merged, from a GGUF of its own, "
                   "instead of as an adapter over a shared base")
    p.add_argument("--max-tokens", type=int, default=2048, help="the largest max_tokens a request may ask for (default 2048)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a request body must arrive within this (default 30); a client that announces more than it sends gets a 408")
    p.add_argument("--gpus", type=int, help="vllm: tensor-parallel over this many GPUs (default: every visible GPU)")


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainer.serve import ServeOptions, api_key_from, serve

    serve(ServeOptions(runs=tuple(Path(r).expanduser() for r in args.run or ()), gguf=Path(args.gguf).expanduser() if args.gguf else None,
                       engine=args.engine, host=args.host, port=args.port, api_key=api_key_from(args.api_key, args.api_key_file),
                       quant=args.quant, max_tokens=args.max_tokens, gpus=args.gpus,
                       body_timeout=args.body_timeout, context=args.context, parallel=args.parallel, threads=args.threads,
                       merged=args.merged))
    return 0


def _add_ui(sub: SubParsers) -> None:
    p = sub.add_parser("ui", help="open the web UI (a form that writes the YAML, runs it and chats with the result)", description="Start the Gradio web UI. Needs the ui extra: pip install -e '.[ui]'. Settings: TRAINER_WORKDIR (where uploads and runs go), TRAINER_UI_SANDBOX=1 (paths must stay inside it), TRAINER_UI_AUTH=user:password.")
    import os

    p.add_argument("--host", default=os.environ.get("TRAINER_UI_HOST", "127.0.0.1"),
                   help="address to listen on (default: TRAINER_UI_HOST, else 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)


def _ui(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("the web UI needs Gradio: pip install -e '.[ui]' (or make ui).") from None
    try:
        from ui.app import launch
    except ModuleNotFoundError:
        raise UserError("the web UI ships with trainer's source (the ui/ folder): run `trainer ui` from a clone "
                        "of the repository, or `make ui` there.") from None
    launch(args.host, args.port)
    return 0


SERVE = Command("serve", _add_serve, _serve)
UI = Command("ui", _add_ui, _ui)
