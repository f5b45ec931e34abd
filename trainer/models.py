"""Loading tokenizers (and, for training, models) from a Hub id, a local folder, or a .gguf file."""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config import Config
from trainer.errors import UserError
from trainer.methods import method_for

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from trainer.config.sections import ModelConfig


def is_gguf(name_or_path: str) -> bool:
    return name_or_path.lower().endswith(".gguf")


def _gguf_cache(path: Path, what: str = "tokenizer") -> Path:
    """Where the tokenizer or the dequantised model read from a GGUF file is kept, so the slow GGUF parse happens once."""
    from trainer.demo import cache_dir

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / f"gguf-{what}s" / f"{path.stem}-{key}"


def _save_once(obj: PreTrainedModel | PreTrainedTokenizerBase, final: Path) -> None:
    """save_pretrained into a temporary folder, then rename: a killed save never looks finished."""
    import shutil

    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    obj.save_pretrained(partial)
    if final.exists():
        shutil.rmtree(partial, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = Path(os.path.expanduser(name_or_path))
    try:
        if is_gguf(name_or_path):
            if not path.is_file():
                raise UserError(f"model.name_or_path: no GGUF file at {name_or_path!r}.")
            cached = _gguf_cache(path)
            if cached.is_dir():
                tokenizer = AutoTokenizer.from_pretrained(cached)
            else:
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                _save_once(tokenizer, cached)
        else:
            tokenizer = AutoTokenizer.from_pretrained(
                str(path) if path.exists() else name_or_path, revision=revision, trust_remote_code=trust_remote_code
            )
    except UserError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors ...
        raise UserError(_load_failure("tokenizer", name_or_path, exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_failure(what: str, name_or_path: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    local = os.path.exists(os.path.expanduser(name_or_path))
    message = f"model.name_or_path: could not load the {what} of {name_or_path!r}: {first}"
    if not local:
        message += (
            ". If this is a Hub id, the Hugging Face Hub may be unreachable from here (no network, or HF_HUB_OFFLINE=1): "
            "download the model where there is internet and point model.name_or_path at the local folder or .gguf file"
        )
    return message + "."


def native_bf16(device: str) -> bool:
    """Whether `device` computes in bf16 natively: a GPU that supports it, or a CPU with AVX512-BF16/AMX."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def torch_dtype(config: Config, device: str) -> torch.dtype:
    """The dtype the base weights are loaded in: model.dtype, or for auto, bf16 where the device computes in bf16
    natively (frozen weights only: a full fine-tune keeps float32 weights on a CPU), else float32."""
    import torch

    if config.model.dtype != "auto":
        return getattr(torch, config.model.dtype)
    frozen_base = not method_for(config).trains_base_weights
    if native_bf16(device) and (device == "cuda" or frozen_base) and mixed_precision(config, device) == "bf16":
        return torch.bfloat16
    return torch.float32


def mixed_precision(config: Config, device: str) -> str:
    """accelerate's mixed_precision for training.precision; auto is bf16 where the device computes in it natively."""
    precision = config.training.precision
    if precision == "auto":
        return "bf16" if native_bf16(device) else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def dequantised_gguf(path: Path) -> Path:
    """A Hugging Face folder (float32 safetensors) of the model in a .gguf file, made once and cached."""
    import torch
    from transformers import AutoModelForCausalLM

    deepspeed_only_when_used()
    if not path.is_file():
        raise UserError(f"model.name_or_path: no GGUF file at {str(path)!r}.")
    cached = _gguf_cache(path, "model")
    if not (cached / "config.json").is_file():
        dequantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        # The weights are plain float32 once dequantised; drop the GGUF marker so they can be saved.
        dequantised.hf_quantizer = None
        if hasattr(dequantised.config, "quantization_config"):
            del dequantised.config.quantization_config
        _save_once(dequantised, cached)
        del dequantised
    return cached


def deepspeed_only_when_used() -> None:
    """Keep DeepSpeed unimported (and its "Setting accelerator to CPU" warning unprinted) in runs that do not use it.

    transformers' save_pretrained unwraps the model with accelerate's extract_model_from_parallel, which imports
    deepspeed whenever it is installed, only to test whether the model is a DeepSpeedEngine. No model can be one
    before deepspeed is imported, so the test is answered from sys.modules: the same answer wherever it matters,
    without the import. Neither library has a setting for this, hence the replaced function.
    """
    import sys

    import accelerate.utils.other as accelerate_other

    accelerate_other.is_deepspeed_available = lambda: "deepspeed" in sys.modules


def load_model(config: Config, device: str, zero3: dict | None = None, empty: bool = False) -> PreTrainedModel:
    """The base model, on `device`, in the configured dtype (4-bit NF4 for qlora).

    `zero3`: a DeepSpeed ZeRO-3 configuration. The model is then built partitioned across the processes
    (transformers creates it under deepspeed.zero.Init) and each process keeps only its share of every weight,
    on its device: without it every process would load the whole model, and DeepSpeed move it whole to the GPU.
    `empty`: built from its config.json with its weights on the meta device (no memory, no values) and its buffers
    real: an FSDP process other than the first, which receives its shards from the first (strategies.FSDP).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress line is the one to watch
    deepspeed_only_when_used()

    m = config.model
    kwargs = {"dtype": torch_dtype(config, device), "trust_remote_code": m.trust_remote_code}
    if m.attn_implementation != "auto":
        kwargs["attn_implementation"] = m.attn_implementation
    method = method_for(config)
    kwargs.update(method.load_options(device))  # qlora: 4-bit quantisation, on the GPU by a device map
    path = Path(os.path.expanduser(m.name_or_path))
    source: str | Path
    try:
        if is_gguf(m.name_or_path):
            source = dequantised_gguf(path)  # before any partitioning: a plain load, cached for the next runs
        else:
            source, kwargs["revision"] = str(path) if path.exists() else m.name_or_path, m.revision
            if "quantization_config" not in kwargs:
                kwargs.update(_dequantised_mxfp4(str(source), m))
        if empty:
            return _empty_model(source, kwargs)
        with _built_partitioned(zero3):
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors ...
        raise UserError(_load_failure("weights", m.name_or_path, exc)) from None
    if not method.places_model() and zero3 is None:
        model.to(device)
    return model


def _empty_model(source: str | Path, kwargs: dict) -> PreTrainedModel:
    """The model of `source` built on the meta device, but for its buffers (rotary frequencies: computed, not loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = AutoConfig.from_pretrained(source, revision=kwargs.get("revision"), trust_remote_code=kwargs["trust_remote_code"])
    options = {k: v for k, v in kwargs.items() if k in ("dtype", "attn_implementation", "trust_remote_code")}
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(settings, **options)


def _dequantised_mxfp4(source: str, m: ModelConfig) -> dict[str, object]:
    """gpt-oss ships its experts in MXFP4, whose kernels have no backward pass: they are dequantised to bf16 as they load,
    as OpenAI's fine-tuning guide for gpt-oss loads them (Mxfp4Config(dequantize=True)), so LoRA, DoRA and full
    fine-tuning train on bf16 weights (20.9 billion: about 42 GB). Other checkpoints load as they are."""
    from transformers import AutoConfig

    try:
        quantization = getattr(AutoConfig.from_pretrained(source, revision=m.revision, trust_remote_code=m.trust_remote_code),
                               "quantization_config", None)
    except Exception:  # noqa: BLE001 - the load that follows says what is wrong with the model
        return {}
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
    if str(getattr(method, "value", method)) != "mxfp4":
        return {}
    from transformers import Mxfp4Config

    return {"quantization_config": Mxfp4Config(dequantize=True)}


@contextlib.contextmanager
def _built_partitioned(zero3: dict | None) -> Iterator[None]:
    """While this lasts, transformers builds and loads models partitioned by ZeRO-3 (it looks for a live
    HfDeepSpeedConfig); after it, a model loads whole again (the merge after training loads a fresh base)."""
    if zero3 is None:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    live = HfDeepSpeedConfig(zero3)  # transformers keeps only a weak reference to it
    try:
        yield
    finally:
        del live
        unset_hf_deepspeed_config()


def add_adapter(model: PreTrainedModel, config: Config) -> nn.Module:
    """Wrap the model for the configured method: LoRA/DoRA/QLoRA adapters through peft, or every weight trainable."""
    t = config.training
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return method_for(config).adapt(model, config)


def adapter_folder(ref: str) -> Path:
    """The folder with adapter_config.json that model.adapter names: a run directory (its model/) or the folder itself."""
    path = Path(ref).expanduser()
    for candidate in (path / "model", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise UserError(f"model.adapter: {ref!r} holds no LoRA adapter (no adapter_config.json in it or in its model/ folder); "
                    "give the run directory of a lora or dora run, or its model/ folder.")


def load_trainable_adapter(model: PreTrainedModel, ref: str) -> PeftModel:
    """The model with an adapter trained before, to train further (its own rank, alpha and targets are kept)."""
    from peft import PeftModel

    folder = adapter_folder(ref)
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (ValueError, KeyError, RuntimeError) as exc:  # peft: another architecture's module names or shapes
        raise UserError(f"model.adapter: the adapter in {folder} does not fit this model ({str(exc).splitlines()[0]}); "
                        "use an adapter trained on model.name_or_path.") from None
