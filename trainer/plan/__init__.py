"""`trainer plan`: what a fine-tune will cost before anything is trained, and what it would save once hosted.

Nothing is loaded beyond the model's config (config.json, a local folder's, or a GGUF header) and, where the
model is local, its tokenizer to count the data's tokens. The parts live in params.py (parameter counts),
memory.py (memory by part), cost.py (time, money, hosting, data sufficiency), report.py (what a plan holds, and
its text) and gpus.yaml (the GPU table).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.backends import get_backend
from trainer.config import Config
from trainer.errors import UserError
from trainer.methods import method_for
from trainer.plan.cost import (
    GpuTable,
    across_gpus,
    flops_per_token,
    load_gpus,
    monthly_saving,
    openai_billed_tokens,
    sufficiency,
    time_here,
)
from trainer.plan.memory import (
    GIB,
    Precision,
    Shape,
    estimate_memory,
    glibc_keeps_freed_blocks,
    largest_batch,
    precision_for,
)
from trainer.plan.params import Architecture, ModelSection, ParameterCount, architecture, read_model_config
from trainer.plan.report import DataInfo, GpuRow, GpusInfo, Hosting, ParametersInfo, Plan, PromptTokens, TimeInfo, render_plan

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["make_plan", "render_plan", "Plan"]


def _local_tokenizer(config: Config) -> PreTrainedTokenizerBase | None:
    m = config.model
    return _tokenizer(m.name_or_path, m.revision, m.trust_remote_code)


@functools.lru_cache(maxsize=4)
def _tokenizer(name_or_path: str, revision: str | None, trust_remote_code: bool) -> PreTrainedTokenizerBase | None:
    """The model's (transformers) tokenizer when it is on this machine (a GGUF file, a folder, or the Hub cache), else None."""
    from trainer.models import is_gguf, load_tokenizer

    path = Path(os.path.expanduser(name_or_path))
    if is_gguf(name_or_path) or path.exists():
        return load_tokenizer(name_or_path, revision, trust_remote_code)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, local_files_only=True)
    except (OSError, ValueError):  # not in the cache: the data side is left out rather than downloaded
        return None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _checkpoint_bytes(config: Config, total: int) -> float:
    """Bytes of the file a CPU run memory-maps while loading (the dequantised float32 cache of a GGUF file)."""
    from trainer.models import is_gguf

    path = Path(os.path.expanduser(config.model.name_or_path))
    if is_gguf(config.model.name_or_path):
        return 4.0 * total
    if path.is_dir():
        return float(sum(f.stat().st_size for f in path.glob("*.safetensors")) or sum(f.stat().st_size for f in path.glob("*.bin")))
    return 2.0 * total


@dataclass(frozen=True)
class DataSide:
    """What the training data means for the plan."""

    examples: int
    lengths: list[int]  # tokens per training example
    tokens_per_epoch: int
    trained_tokens_per_epoch: int
    processed_tokens_per_epoch: float  # padding included
    epochs: float
    shape: Shape  # the largest micro-batch
    seconds_per_epoch_measured: float | None


def _data_side(config: Config, tokenizer: PreTrainedTokenizerBase) -> DataSide:
    """Token counts of the training data and the shape of its largest micro-batch."""
    from trainer.data.pipeline import prepare_data
    from trainer.data.report import build_report

    data = prepare_data(config, tokenizer, stop_on_problems=False)
    report = build_report(config, data)
    lengths = data.train.lengths.tolist()
    t, d = config.training, config.data
    packed = get_backend(config.backend.name).trains_packed_rows(config)
    batch = min(t.batch_size, len(lengths))
    if packed:
        length = min(d.max_seq_length, sum(lengths))
        share = report.trained.total / max(report.tokens.total, 1)
        shape = Shape(batch=min(t.batch_size, report.rows_packed), length=length, trained_per_row=math.ceil(length * share))
        per_epoch_tokens: float = report.rows_packed * d.max_seq_length
    else:
        shape = Shape(batch=batch, length=report.tokens.maximum, trained_per_row=report.trained.maximum)
        per_epoch_tokens = report.tokens.total / max(1 - report.padding_unpacked, 1e-9)
    if t.epochs is not None:
        epochs = t.epochs
    else:
        assert t.max_steps is not None  # rules.epochs_xor_max_steps: one of the two is set
        epochs = t.max_steps / max(report.steps_per_epoch, 1)
    return DataSide(len(lengths), lengths, report.tokens.total, report.trained.total, per_epoch_tokens, epochs, shape,
                    report.seconds_per_epoch)


def _prompt_tokens(config: Config, tokenizer: PreTrainedTokenizerBase) -> PromptTokens | None:
    """Mean prompt tokens per request of the evaluation cases: as they are (the tuned model), with the few-shot
    examples, and with the retrieved ones (what the baselines need in every request)."""
    from trainer.data.templates import template_of
    from trainer.evaluation.prompts import few_shot_messages, pick_shots
    from trainer.evaluation.retrieval import Retriever
    from trainer.evaluation.runner import eval_cases
    from trainer.generate import ChatMessage, render_prompt

    try:
        cases, pool = eval_cases(config, tokenizer)
    except UserError:  # no chat cases (plain text data): nothing to compare
        return None
    template = template_of(config.data, tokenizer) if config.data.format != "text" else None
    jinja, variables = (template.jinja, dict(template.variables)) if template is not None else (None, None)
    e = config.evaluation

    def mean_tokens(conversations: list[list[ChatMessage]]) -> float:
        return sum(len(tokenizer(render_prompt(tokenizer, c, jinja, variables=variables), add_special_tokens=False)["input_ids"])
                   for c in conversations) / len(conversations)

    shots = pick_shots(pool, e.few_shot, config.training.seed)
    retriever = Retriever(pool, e.retrieval.k, e.retrieval.embedding_model, pool.index_dir)
    retrieved = retriever.shots(cases)
    return {"cases": len(cases), "tuned": mean_tokens([list(c.messages) for c in cases]),
            "few_shot": mean_tokens([few_shot_messages(c, shots) for c in cases]), "few_shot_k": len(shots),
            "retrieval": mean_tokens([few_shot_messages(c, r) for c, r in zip(cases, retrieved)]), "retrieval_k": retriever.k}


def count_parameters(arch: Architecture, config: Config) -> ParameterCount:
    """The parameters of the model as training.method trains it (trainer/methods/)."""
    return method_for(config).count_parameters(arch, config)


@functools.lru_cache(maxsize=8)
def _architecture(model: ModelSection) -> Architecture:
    """The architecture of config.model, read once per process (the web UI re-plans on every change of the form)."""
    return architecture(read_model_config(model))


def make_plan(config: Config, requests: int | None = None, price_per_million: float | None = None, gpus_file: str | None = None) -> Plan:
    from trainer.hardware import Hardware
    from trainer.models import native_bf16

    arch = _architecture(config.model)
    count = count_parameters(arch, config)
    device = Hardware.detect().device(config.backend.peft.device)
    precision = precision_for(config, device, native_bf16(device) if device in ("cpu", "cuda") else False)
    tokenizer = _local_tokenizer(config)
    data = _data_side(config, tokenizer) if tokenizer is not None else None
    t, d = config.training, config.data
    shape = data.shape if data else Shape(t.batch_size, d.max_seq_length, d.max_seq_length)
    file_bytes = _checkpoint_bytes(config, arch.total)
    keeps = glibc_keeps_freed_blocks()
    memory = estimate_memory(arch, count, config, device, precision, shape, file_bytes, heap_keeps_freed=keeps)
    at_max = estimate_memory(arch, count, config, device, precision, Shape(t.batch_size, d.max_seq_length, d.max_seq_length), file_bytes,
                             heap_keeps_freed=keeps)
    processed = data.processed_tokens_per_epoch * data.epochs if data else None
    plan: Plan = {
        "model": {"name_or_path": config.model.name_or_path, "type": arch.model_type, "layers": arch.layers,
                  "hidden_size": arch.hidden_size, "vocab_size": arch.vocab_size},
        "method": t.method,
        "parameters": _parameters(arch, count),
        "device": device,
        "precision": {"weights": method_for(config).stored_weights(precision.weights), "compute": precision.compute},
        "shape": {"micro_batch": shape.batch, "tokens_per_row": shape.length, "trained_per_row": shape.trained_per_row,
                  "from": "the data's longest batch" if data else "max_seq_length (the data's tokens are not known: tokenizer not local)"},
        "memory": memory.to_dict(),
        "memory_at_max_length": {"peak_bytes": at_max.peak, "tokens_per_row": d.max_seq_length},
        "gpus": _gpus(config, arch, count, shape, load_gpus(gpus_file), processed),
        "time": _time(config, arch, count, processed, data),
    }
    if data and tokenizer is not None:  # data is known only with a local tokenizer
        plan["data"] = _data_info(data)
        prompts = _prompt_tokens(config, tokenizer)
        if prompts:
            plan["hosting"] = _hosting(prompts, requests, price_per_million)
    return plan


def _gpus(config: Config, arch: Architecture, count: ParameterCount, shape: Shape, table: GpuTable, processed: float | None) -> GpusInfo:
    """Each GPU of the table: the peak memory, the largest micro-batch that fits, and (with the data's tokens) time and cost."""
    from trainer.distributed import node_range

    t = config.training
    flops, _ = flops_per_token(computed(count, arch), t.method, t.gradient_checkpointing)
    nodes, per_node = node_range(config.distributed)[1], config.distributed.num_processes or 1  # elastic: at its most
    rows = []
    for gpu in table.gpus:
        gpu_precision = precision_for(config, "cuda", gpu.bf16)
        if gpu_precision.compute == "float32" and t.precision == "auto":
            gpu_precision = Precision(gpu_precision.weights, "float16")  # fp16 mixed precision where bf16 is missing
        limit = gpu.memory_gib * GIB

        def fits(batch: int, checkpointing: bool, gpu_precision: Precision = gpu_precision, limit: float = limit) -> bool:
            trial = Shape(batch, shape.length, shape.trained_per_row)
            return estimate_memory(arch, count, config, "cuda", gpu_precision, trial, None, checkpointing).peak <= limit

        peak = estimate_memory(arch, count, config, "cuda", gpu_precision, shape, None).peak
        best = largest_batch(lambda b: fits(b, t.gradient_checkpointing), shape.batch)
        with_checkpointing = largest_batch(lambda b: fits(b, True), shape.batch) if not best and not t.gradient_checkpointing else None
        row: GpuRow = {"gpu": gpu.name, "memory_gib": gpu.memory_gib, "peak_gib": peak / GIB, "fits": peak <= limit,
                       "micro_batch": best, "micro_batch_with_checkpointing": with_checkpointing}
        if processed is not None:
            seconds = processed * flops / (gpu.tflops * 1e12 * table.utilisation)
            row["hours"], row["cost"] = seconds / 3600, seconds / 3600 * gpu.price_per_hour
            if nodes * per_node > 1:
                row["run_hours"], row["run_cost"] = across_gpus(row["hours"], row["cost"], nodes * per_node)
        rows.append(row)
    return {"prices_taken": table.prices_taken, "currency": table.currency, "utilisation": table.utilisation,
            "nodes": nodes, "gpus_per_node": per_node, "rows": rows}


def _parameters(arch: Architecture, count: ParameterCount) -> ParametersInfo:
    info: ParametersInfo = {**count.to_dict(), "trainable_share": count.trainable / count.total}
    if arch.experts:
        info["per_token"], info["experts"] = arch.active, f"{arch.experts_per_token} of {arch.experts}"
    return info


def computed(count: ParameterCount, arch: Architecture) -> int:
    """The parameters whose FLOPs a token costs: of a mixture of experts, only the experts it is routed to."""
    return count.base - (arch.total - arch.active)


def _time(config: Config, arch: Architecture, count: ParameterCount, processed: float | None, data: DataSide | None) -> TimeInfo:
    from trainer.throughput import estimates, throughput_key

    t = config.training
    flops, why = flops_per_token(computed(count, arch), t.method, t.gradient_checkpointing)
    if arch.experts:
        why += f"; of the parameters a token goes through, with {arch.experts_per_token} of {arch.experts} experts"
    time: TimeInfo = {"flops_per_token": flops, "flops_rule": why, "processed_tokens": processed, "measured_here_seconds": None}
    here = time_here(estimates(), throughput_key(config), data.trained_tokens_per_epoch * data.epochs, computed(count, arch),
                     config.evaluation.after_training) if data else None
    if here is not None:
        time["measured_here_seconds"], time["measured_here_from"] = here.training_seconds, here.training_from
        time["overhead_here_seconds"], time["evaluation_here_seconds"] = here.overhead_seconds, here.evaluation_seconds
        time["total_here_seconds"] = here.total_seconds
    note = get_backend(config.backend.name).plan_note(config)
    if note is not None:
        time["note"] = note
    return time


def _data_info(data: DataSide) -> DataInfo:
    epochs_openai, billed = openai_billed_tokens(data.lengths)
    return {"examples": data.examples, "tokens_per_epoch": data.tokens_per_epoch,
            "trained_tokens_per_epoch": data.trained_tokens_per_epoch, "epochs": data.epochs,
            "trained_tokens": data.trained_tokens_per_epoch * data.epochs, "sufficiency": sufficiency(data.examples),
            "openai_default_epochs": epochs_openai, "openai_billed_tokens": billed}


def _hosting(prompts: PromptTokens, requests: int | None, price_per_million: float | None) -> Hosting:
    hosting: Hosting = {"prompt_tokens": prompts}
    if requests and price_per_million is not None:
        hosting["requests_per_month"], hosting["price_per_million"] = requests, price_per_million
        hosting["saved_per_month"] = {"few_shot": monthly_saving(prompts["tuned"], prompts["few_shot"], requests, price_per_million),
                                      "retrieval": monthly_saving(prompts["tuned"], prompts["retrieval"], requests, price_per_million)}
    return hosting
