"""`trainer serve --engine vllm`: vLLM's own OpenAI-compatible server for GPUs and many users.

LoRA runs on one base are served as that base plus every adapter (`--enable-lora`, one `--lora-modules` entry per
run, `--max-loras` and `--max-lora-rank` from the runs), chosen per request by model name; a full fine-tune, a DoRA
run, or a run whose base came from a GGUF file (vLLM does not put LoRA adapters on GGUF models) is served alone from
its own weights: model/, or merged/ (written here once if missing). Tool calls of Hermes-style templates are parsed by
vLLM's own parser. Tensor-parallel over the GPUs it is given. bench/vllm_throughput.py measures it on a GPU.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.serve import ServeOptions


def vllm_command(runs: Path | Sequence[Path], host: str, port: int, gpus: int, max_tokens: int, merged: Path | None = None) -> list[str]:
    """The `vllm serve` command line for run directories on one base: every LoRA run a --lora-modules entry over
    it (`--max-loras` all of them, `--max-lora-rank` the largest rank); or one run from its own weights (`merged`:
    these instead of model/). The API key is not on it (a command line is public): run_vllm hands it over as VLLM_API_KEY."""
    from trainer.config import load_config
    from trainer.export.gguf import run_name
    from trainer.export.lora import adapter_config
    from trainer.models import is_gguf

    runs = [runs] if isinstance(runs, Path) else list(runs)
    configs = [load_config(str(run / "config.yaml"), check_files=False) for run in runs]
    names = [run_name(run) for run in runs]
    adapters = [adapter_config(run) for run in runs]
    lora = merged is None and all(a is not None and not a.get("use_dora") and not is_gguf(c.model.name_or_path)
                                  for a, c in zip(adapters, configs))
    if lora:
        bases = {(c.model.name_or_path, c.model.revision) for c in configs}
        if len(bases) > 1:
            raise UserError("vLLM serves LoRA adapters over one base model; these runs have " + ", ".join(sorted(b[0] for b in bases)) +
                            ": start one `trainer serve --engine vllm` per base (on its own --port)")
        config = configs[0]
        model = config.model.name_or_path
        extra = ["--enable-lora", "--lora-modules", *(f"{name}={run / 'model'}" for name, run in zip(names, runs)),
                 "--max-loras", str(len(runs)), "--max-lora-rank", str(vllm_max_lora_rank(max(int(a["r"]) for a in adapters if a)))]
        if config.model.revision:
            extra += ["--revision", config.model.revision]
    else:
        if len(runs) > 1:
            raise UserError("vLLM serves several runs only as LoRA adapters over one base model (not DoRA, not on a GGUF base); "
                            f"{', '.join(names)} include a full fine-tune or a run that must be merged: serve it with its own "
                            "`trainer serve --engine vllm` (on its own --port)")
        config = configs[0]
        model = str(merged or runs[0] / "model")
        extra = ["--served-model-name", names[0]]
    templates = {(run / "export" / "chat_template.jinja").read_text(encoding="utf-8") if (run / "export" / "chat_template.jinja").is_file() else ""
                 for run, c in zip(runs, configs) if c.data.format != "text"}
    if len(templates) > 1:
        raise UserError(f"{', '.join(names)} were trained with different chat templates, and vLLM renders one per server: "
                        "serve them from separate `trainer serve --engine vllm` commands")
    command = ["vllm", "serve", model, *extra, "--host", host, "--port", str(port),
               "--tensor-parallel-size", str(gpus), "--max-model-len", str(max(c.data.max_seq_length for c in configs) + max_tokens),
               "--generation-config", "vllm"]
    if config.data.format != "text":
        command += ["--chat-template", str(runs[0] / "export" / "chat_template.jinja")]
        if "<tool_call>" in next(iter(templates), ""):  # Hermes-style tool calls: parsed by vLLM's own parser
            command += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    if config.model.trust_remote_code:
        command.append("--trust-remote-code")
    return command


def vllm_max_lora_rank(r: int) -> int:
    """vLLM accepts only these maximum ranks; the smallest one that holds r."""
    return next(size for size in (8, 16, 32, 64, 128, 256, 320, 512) if size >= r)


def write_chat_template(run: Path) -> Path:
    """The template the run was trained with, for vLLM's --chat-template (the base model's may differ)."""
    from trainer.serve.runs import template_file

    path = template_file(run)
    if path is None:  # a text-format run: no template (vllm_command passes none)
        path = run / "export" / "chat_template.jinja"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
    return path


def run_vllm(options: ServeOptions) -> None:
    import torch

    from trainer.config import load_config
    from trainer.models import is_gguf
    from trainer.serve.runs import expand_runs

    if options.gguf is not None:
        raise UserError("--engine vllm serves run directories; a GGUF file is served by llama.cpp (--engine llama.cpp).")
    runs = expand_runs(options.runs)
    gpus = options.gpus or (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if gpus < 1:
        raise UserError("--engine vllm needs NVIDIA GPUs (none is visible). On a CPU, serve with the default engine: "
                        f"trainer serve --run {runs[0]}")
    merged = None
    config = load_config(str(runs[0] / "config.yaml"), check_files=False)
    if len(runs) == 1 and is_gguf(config.model.name_or_path) and (runs[0] / "model" / "adapter_config.json").is_file():
        merged = runs[0] / "merged"  # vLLM does not put LoRA adapters on GGUF models
        if not (merged / "config.json").is_file():
            from trainer.rundir import merge_saved_adapter

            merge_saved_adapter(runs[0])
    for run in runs:
        write_chat_template(run)
    command = vllm_command(runs, options.host, options.port, gpus, options.max_tokens, merged)
    print(f"Starting vLLM: {' '.join(command)}", file=sys.stderr, flush=True)
    if shutil.which("vllm") is None:
        raise UserError("vLLM is not installed here: pip install vllm (on a machine with NVIDIA GPUs), then run the "
                        "command above, or `trainer serve --engine vllm` again.")
    env = {**os.environ, "VLLM_API_KEY": options.api_key} if options.api_key else dict(os.environ)
    os.execvpe(command[0], command, env)
