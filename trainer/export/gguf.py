"""A run's model as one GGUF file for llama.cpp, Ollama and LM Studio: the adapter folded into the base,
the tokenizer, the chat template the run was trained with, and its end-of-turn tokens.

The conversion is llama.cpp's own `convert_hf_to_gguf.py` (built once by trainer.export.llamacpp);
trainer only prepares the Hugging Face folder it reads and checks what comes out.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config import load_config
from trainer.errors import UserError
from trainer.export.llamacpp import LlamaCpp, Say

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # written by the converter directly
QUANTIZER_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
QUANT_TYPES = CONVERTER_TYPES + QUANTIZER_TYPES


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Exported:
    gguf: Path
    quant: str
    chat_template: str
    stop: tuple[str, ...]  # the texts that end an assistant turn (llama.cpp's end-of-generation tokens)


def export_gguf(run_dir: str | Path, quant: str = "q8_0", out: str | Path | None = None, say: Say = _say) -> Exported:
    """Write <run>/export/<run name>-<quant>.gguf (or `out`) and return where it is."""
    quant = quant.lower()
    if quant not in QUANT_TYPES:
        raise UserError(f"--quant {quant}: not a type trainer can write; choose one of {', '.join(QUANT_TYPES)}.")
    run_dir = Path(run_dir).expanduser()
    target = Path(out).expanduser() if out else run_dir / "export" / f"{run_name(run_dir)}-{quant}.gguf"
    template, stop = export_folder_to_gguf(run_dir, target, quant, say)
    say(f"Wrote {target} ({target.stat().st_size / 1e6:.0f} MB, {quant})")
    return Exported(target, quant, template, stop)


def export_folder_to_gguf(run_dir: Path, target: Path, quant: str, say: Say = _say, base_only: bool = False) -> tuple[str, tuple[str, ...]]:
    """The run's model (write_merged_folder: merged, or `base_only`) converted to `target`; returns (template, stop texts)."""
    from trainer.export import llamacpp

    tools = llamacpp.require(say)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.stem}.hf-{os.getpid()}"
    try:
        template, stop = write_merged_folder(run_dir, staging, say, base_only=base_only)
        first = target if quant in CONVERTER_TYPES else target.with_name(f".{target.stem}.f16-{os.getpid()}.gguf")
        _convert(tools, staging, first, quant if quant in CONVERTER_TYPES else "f16", say)
        if quant in QUANTIZER_TYPES:
            _quantize(tools, first, target, quant, say)
            first.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return template, stop


def run_name(run_dir: Path) -> str:
    """The run's name, as its GGUF file, `ollama create` and `trainer serve` call the model: the Hub repository's name
    where the run is uploaded (output.push_to_hub), else the name its config gave the run directory (output.dir: the
    folder may have been copied or renamed since, to a generic `run` say), else the folder's own name; in the
    characters an Ollama model name allows (letters, digits, `_`, `-`, `.`: a space would split `ollama create`)."""
    import yaml

    try:  # the file as trainer wrote it, not load_config: that refuses a push_to_hub config where HF_TOKEN is unset
        output = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")).get("output") or {}
        names = [str((output.get("push_to_hub") or {}).get("repo_id") or "").split("/")[-1], str(output.get("dir") or "")]
    except (OSError, yaml.YAMLError, AttributeError):  # AttributeError: a YAML document that is not trainer's config
        names = []
    for name in names + [str(run_dir.resolve())]:
        name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(os.path.normpath(name)))).strip("-.")[:64]
        if name:
            return name
    return "model"


def write_merged_folder(run_dir: Path, folder: Path, say: Say = _say, base_only: bool = False) -> tuple[str, tuple[str, ...]]:
    """The tuned model as a Hugging Face folder (float weights, adapter merged) whose tokenizer carries
    the run's chat template (all of the model's named ones where the run used them) and ends turns with the run's
    end-of-turn token. Returns (the template of a conversation without tools, stop texts).
    `base_only`: the base model of a LoRA run without its adapter, with the run's tokenizer (the model a llama.cpp
    LoRA adapter is applied to, trainer.export.lora)."""
    from trainer.generate import load_base, load_run, stop_texts

    if base_only:
        say(f"Writing the base model of {run_dir} (without its adapter) ...")
        config = load_config(str(run_dir / "config.yaml"), check_files=False)
        loaded = load_base(config.replace(model=config.model.replace(dtype="float32")), "cpu", tokenizer_from=str(run_dir / "model"))
    else:
        say(f"Merging the adapter of {run_dir} into its base model ...")
        loaded = load_run(run_dir, "cpu", dtype="float32")  # merged in full precision; the GGUF type rounds once, at the end
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tokenizer = loaded.tokenizer
    template = loaded.template
    stop = tuple(stop_texts(tokenizer))
    named = isinstance(tokenizer.chat_template, dict) and loaded.config.data.chat_template == "tokenizer"
    if template is not None and not named:
        tokenizer.chat_template = template  # what the run was trained with, e.g. a built-in or a custom one
    # else the model's named templates, as the run picked them for each example (tool_use for those with tools): the
    # converter writes `default` as tokenizer.chat_template and each other one as tokenizer.chat_template.<name>, listed
    # in tokenizer.chat_templates, where llama.cpp's server finds them (its --jinja picks tool_use for requests with tools)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    _write_generation_config(partial, tokenizer)
    os.replace(partial, folder)
    return template or "", stop


def _write_generation_config(folder: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every end-of-turn token as an end-of-sequence id, so llama.cpp stops where `trainer generate` stops."""
    from trainer.generate import stop_ids

    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config["eos_token_id"] = stop_ids(tokenizer)
    path.write_text(json.dumps(config, indent=2))


def _convert(tools: LlamaCpp, folder: Path, target: Path, outtype: str, say: Say) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    say(f"Converting to GGUF ({outtype}) with llama.cpp's convert_hf_to_gguf.py ...")
    command = [sys.executable, str(tools.converter), str(folder), "--outfile", str(partial), "--outtype", outtype]
    code, tail = run_showing_progress(command, tools.converter_env(), show=say is _say)
    if code != 0:
        raise UserError(f"llama.cpp's converter could not convert {folder} (exit {code}):\n{tail}")
    os.replace(partial, target)  # a killed conversion never leaves a file under the final name


def run_showing_progress(command: list[str], env: dict[str, str], show: bool) -> tuple[int, str]:
    """Run one of llama.cpp's converters; with `show`, its own progress bar (the tqdm line "Writing: 42%|...") goes to
    stderr as it moves, and nothing else of its log (a line per tensor). Returns the exit code and the log's tail."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    tail, pending = b"", b""
    while chunk := process.stdout.read1(65536):  # type: ignore[attr-defined]  # a BufferedReader: what has arrived
        tail = (tail + chunk)[-6000:]
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        bars = [line for line in lines if line.startswith(b"Writing:")]
        if show and bars:
            sys.stderr.write("\r" + bars[-1].decode("utf-8", "replace"))
            sys.stderr.flush()
    code = process.wait()
    if show:
        sys.stderr.write("\n")
    return code, tail.decode("utf-8", "replace").strip()[-3000:]


def _quantize(tools: LlamaCpp, source: Path, target: Path, quant: str, say: Say) -> None:
    say(f"Quantizing to {quant} with llama-quantize ...")
    partial = target.with_name(target.name + ".partial")
    result = subprocess.run([str(tools.quantize), str(source), str(partial), quant.upper()], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-3000:]
        raise UserError(f"llama-quantize could not write {quant} (exit {result.returncode}):\n{tail}")
    os.replace(partial, target)
