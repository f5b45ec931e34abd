"""`trainer serve --engine vllm`: vLLM's own OpenAI-compatible server for GPUs and many users.

A LoRA run is served as the base model plus the adapter (`--enable-lora --lora-modules`), so one server
can hold several adapters over one base; a full fine-tune, or a run whose base came from a GGUF file
(vLLM does not put LoRA adapters on GGUF models), is served from its own weights: model/, or merged/
(written here once if missing). Tensor-parallel over the GPUs it is given.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.serve import ServeOptions


def vllm_command(run: Path, host: str, port: int, gpus: int, max_tokens: int, merged: Path | None = None) -> list[str]:
    """The `vllm serve` command line for a run directory (`merged`: serve these weights instead of base + adapter).
    The API key is not on it (a command line is public): run_vllm hands it over as VLLM_API_KEY."""
    from trainer.config import load_config
    from trainer.export.gguf import run_name
    from trainer.models import is_gguf

    config = load_config(str(run / "config.yaml"), check_files=False)
    name = run_name(run)
    adapter = (run / "model" / "adapter_config.json").is_file()
    if adapter and merged is None and not is_gguf(config.model.name_or_path):
        model = config.model.name_or_path
        extra = ["--enable-lora", "--lora-modules", f"{name}={run / 'model'}", "--max-lora-rank", str(_lora_rank(config.training.lora.r))]
        if config.model.revision:
            extra += ["--revision", config.model.revision]
    else:
        model = str(merged or run / "model")
        extra = ["--served-model-name", name]
    command = ["vllm", "serve", model, *extra, "--host", host, "--port", str(port),
               "--tensor-parallel-size", str(gpus), "--max-model-len", str(config.data.max_seq_length + max_tokens),
               "--generation-config", "vllm"]
    if config.data.format != "text":
        command += ["--chat-template", str(run / "export" / "chat_template.jinja")]
    if config.model.trust_remote_code:
        command.append("--trust-remote-code")
    return command


def _lora_rank(r: int) -> int:
    """vLLM accepts only these maximum ranks; the smallest one that holds r."""
    return next(size for size in (8, 16, 32, 64, 128, 256, 320, 512) if size >= r)


def write_chat_template(run: Path) -> Path:
    """The template the run was trained with, for vLLM's --chat-template (the base model's may differ)."""
    from trainer.serve.engines import run_template

    path = run / "export" / "chat_template.jinja"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_template(run) or "", encoding="utf-8")
    return path


def run_vllm(options: ServeOptions) -> None:
    import torch

    from trainer.config import load_config
    from trainer.models import is_gguf

    run = options.run
    assert run is not None  # check_options: vLLM serves a run directory, not a GGUF file
    gpus = options.gpus or (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if gpus < 1:
        raise UserError("--engine vllm needs NVIDIA GPUs (none is visible). On a CPU, serve with the default engine: "
                        f"trainer serve --run {run}")
    config = load_config(str(run / "config.yaml"), check_files=False)
    merged = None
    if is_gguf(config.model.name_or_path) and (run / "model" / "adapter_config.json").is_file():
        merged = run / "merged"
        if not (merged / "config.json").is_file():
            from trainer.rundir import merge_saved_adapter

            merge_saved_adapter(run)
    write_chat_template(run)
    command = vllm_command(run, options.host, options.port, gpus, options.max_tokens, merged)
    print(f"Starting vLLM: {' '.join(command)}", file=sys.stderr, flush=True)
    if shutil.which("vllm") is None:
        raise UserError("vLLM is not installed here: pip install vllm (on a machine with NVIDIA GPUs), then run the "
                        "command above, or `trainer serve --engine vllm` again.")
    env = {**os.environ, "VLLM_API_KEY": options.api_key} if options.api_key else dict(os.environ)
    os.execvpe(command[0], command, env)
