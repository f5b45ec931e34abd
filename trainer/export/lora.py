"""A LoRA run as llama.cpp serves many of them: the adapter alone as a GGUF LoRA file (`trainer export --to
gguf-lora`, written by llama.cpp's own convert_lora_to_gguf.py), over one GGUF of the base model that every run on
that base shares (`base_gguf`, cached by what makes it: the base weights, the chat template and the end-of-turn
tokens). `llama-server --lora` loads the adapters beside the base once and applies them per request.

llama.cpp's LoRA format holds, per adapted matrix, A and B and one alpha for the whole file (scale = alpha / rank).
What it cannot say is served merged instead (`lora_problem` says why): DoRA (a magnitude vector per adapted
weight), modules trained whole (peft's modules_to_save: embeddings, lm_head), per-module ranks or alphas
(rank_pattern, alpha_pattern). rsLoRA (scale alpha / sqrt(rank)) is written with the alpha that gives its scale.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from trainer.errors import UserError
from trainer.export.llamacpp import Say

LORA_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_lora_to_gguf.py writes


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def adapter_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "model" / "adapter_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def lora_problem(run_dir: Path) -> str | None:
    """Why the run cannot be served as base + llama.cpp LoRA adapter (it is served merged then), or None."""
    config = adapter_config(run_dir)
    if config is None:
        return "it is a full fine-tune (no adapter)"
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return f"its adapter is {config.get('peft_type')}, not LoRA"
    if config.get("use_dora"):
        return ("it is a DoRA adapter: llama.cpp's LoRA format holds A, B and one alpha per file, not DoRA's magnitude "
                "vectors")
    if config.get("modules_to_save"):
        return f"it trains whole modules ({', '.join(config['modules_to_save'])}), which llama.cpp's LoRA format cannot hold"
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        return "its adapter has per-module ranks or alphas; llama.cpp's LoRA format has one alpha per file"
    return None


def lora_rank(run_dir: Path) -> int:
    config = adapter_config(run_dir) or {}
    return int(config.get("r", 8))


def export_gguf_lora(run_dir: str | Path, outtype: str = "f16", out: str | Path | None = None, say: Say = _say) -> Path:
    """Write <run>/export/<run name>-lora-<type>.gguf (or `out`): the adapter alone, for llama.cpp's --lora."""
    from trainer.export import llamacpp
    from trainer.export.gguf import run_name, run_showing_progress

    outtype = outtype.lower()
    if outtype not in LORA_TYPES:
        raise UserError(f"--quant {outtype}: a LoRA adapter is written as one of {', '.join(LORA_TYPES)} "
                        "(the base it is applied to may be quantized further).")
    run_dir = Path(run_dir).expanduser()
    problem = lora_problem(run_dir)
    if problem is not None:
        raise UserError(f"{run_dir} cannot be exported as a llama.cpp LoRA adapter: {problem}. "
                        f"Export the merged model instead: trainer export --to gguf --run {run_dir}")
    target = Path(out).expanduser() if out else run_dir / "export" / f"{run_name(run_dir)}-lora-{outtype}.gguf"
    tools = llamacpp.require(say)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="trainer-lora-") as tmp:
        adapter, base = _adapter_folder(run_dir, Path(tmp)), _base_config_folder(run_dir, Path(tmp) / "base")
        say(f"Converting the adapter of {run_dir} to a GGUF LoRA ({outtype}) with llama.cpp's convert_lora_to_gguf.py ...")
        command = [sys.executable, str(tools.lora_converter), str(adapter), "--base", str(base), "--outfile", str(partial),
                   "--outtype", outtype]
        code, tail = run_showing_progress(command, tools.converter_env(), show=say is _say)
    if code != 0:
        partial.unlink(missing_ok=True)
        raise UserError(f"llama.cpp's convert_lora_to_gguf.py could not convert the adapter of {run_dir} (exit {code}):\n{tail}")
    os.replace(partial, target)
    say(f"Wrote {target} ({target.stat().st_size / 1e6:.1f} MB, LoRA {outtype})")
    return target


def lora_gguf(run_dir: Path, outtype: str = "f16", say: Say = _say) -> Path:
    """The run's GGUF LoRA adapter, converted now if missing or older than the adapter."""
    from trainer.export.gguf import run_name

    path = run_dir / "export" / f"{run_name(run_dir)}-lora-{outtype}.gguf"
    if path.is_file() and path.stat().st_mtime >= (run_dir / "model").stat().st_mtime:
        return path
    say(f"{run_dir} has no GGUF LoRA adapter yet: converting it first (once).")
    return export_gguf_lora(run_dir, outtype, say=say)


def _adapter_folder(run_dir: Path, tmp: Path) -> Path:
    """The run's adapter folder as the converter reads it. rsLoRA scales by alpha / sqrt(r), llama.cpp by alpha / r:
    the converter gets a copy of the config whose alpha gives the same scale (the weights are linked, not copied)."""
    config = adapter_config(run_dir) or {}
    model = run_dir / "model"
    if not config.get("use_rslora"):
        return model
    folder = tmp / "adapter"
    folder.mkdir()
    for item in model.iterdir():
        if item.name != "adapter_config.json":
            (folder / item.name).symlink_to(item.resolve())
    r = int(config["r"])
    config = {**config, "lora_alpha": float(config["lora_alpha"]) * math.sqrt(r), "use_rslora": False}
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _base_config_folder(run_dir: Path, folder: Path) -> Path:
    """A folder with the base model's config.json, all the converter reads of the base (its architecture and shapes)."""
    from transformers import AutoConfig

    from trainer.config import load_config
    from trainer.models import is_gguf

    m = load_config(str(run_dir / "config.yaml"), check_files=False).model
    path = Path(os.path.expanduser(m.name_or_path))
    try:
        if is_gguf(m.name_or_path):
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        else:
            config = AutoConfig.from_pretrained(str(path) if path.exists() else m.name_or_path, revision=m.revision,
                                                trust_remote_code=m.trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors ...
        raise UserError(f"the base model of {run_dir} ({m.name_or_path}) could not be read: {exc}") from None
    if not getattr(config, "architectures", None):  # a config read from a GGUF file names no model class; the converter needs one
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    config.save_pretrained(folder)
    return folder


def base_gguf(run_dir: Path, quant: str = "q8_0", say: Say = _say) -> Path:
    """The GGUF of the run's base model (no adapter) with the run's tokenizer, chat template and end-of-turn tokens,
    made once and shared in the trainer cache by every run with the same base, template and stop tokens."""
    from trainer.demo import cache_dir
    from trainer.export.gguf import QUANT_TYPES, export_folder_to_gguf

    if quant not in QUANT_TYPES:
        raise UserError(f"--quant {quant}: not a type trainer can write; choose one of {', '.join(QUANT_TYPES)}.")
    key = _base_key(run_dir)
    target = cache_dir() / "gguf-bases" / f"{key}-{quant}.gguf"
    if target.is_file():
        return target
    say(f"The base model of {run_dir} has no GGUF yet: converting it first (once; every LoRA run on it shares it).")
    export_folder_to_gguf(run_dir, target, quant, say, base_only=True)
    return target


def _base_key(run_dir: Path) -> str:
    """What makes a base GGUF: the base model (name, revision, and for a local file or folder its size and time), the
    run's chat template and its tokenizer files (the end-of-turn tokens are read from them)."""
    from trainer.config import load_config
    from trainer.data.templates import resolve_template
    from trainer.models import load_tokenizer

    config = load_config(str(run_dir / "config.yaml"), check_files=False)
    m = config.model
    path = Path(os.path.expanduser(m.name_or_path))
    parts = [m.name_or_path, str(m.revision)]
    if path.exists():
        parts.append(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}")
    template = None if config.data.format == "text" else resolve_template(config.data.chat_template,
                                                                         load_tokenizer(str(run_dir / "model"))).jinja
    parts.append(template or "")
    for name in sorted(("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")):
        file = run_dir / "model" / name
        parts.append(hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.name.removesuffix(".gguf"))[:48] or "base"
    return f"{stem}-{digest}"
