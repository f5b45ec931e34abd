"""`trainer plan`: what a fine-tune will cost before anything is trained, and what it would save once hosted.

Nothing is loaded beyond the model's config (config.json, a local folder's, or a GGUF header) and, where the
model is local, its tokenizer to count the data's tokens. The parts live in params.py (parameter counts),
memory.py (memory by part), cost.py (time, money, hosting, data sufficiency) and gpus.yaml (the GPU table).
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from trainer.config import Config
from trainer.errors import UserError
from trainer.plan.cost import (
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
    largest_batch,
    precision_for,
)
from trainer.plan.params import architecture, count_parameters, read_model_config


def _local_tokenizer(config: Config):
    m = config.model
    return _tokenizer(m.name_or_path, m.revision, m.trust_remote_code)


@functools.lru_cache(maxsize=4)
def _tokenizer(name_or_path: str, revision: str | None, trust_remote_code: bool):
    """The model's tokenizer when it is on this machine (a GGUF file, a folder, or the Hub cache), else None."""
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


def _data_side(config: Config, tokenizer) -> dict | None:
    """Token counts of the training data, the shape of its largest micro-batch, and the prompts of each system."""
    from trainer.data.pipeline import prepare_data
    from trainer.data.report import build_report

    data = prepare_data(config, tokenizer, stop_on_problems=False)
    report = build_report(config, data)
    lengths = data.train.lengths.tolist()
    t, d = config.training, config.data
    packed = d.packing or config.backend.name == "autotrain"  # AutoTrain always packs rows of block_size
    batch = min(t.batch_size, len(lengths))
    if packed:
        length = min(d.max_seq_length, sum(lengths))
        share = report.trained.total / max(report.tokens.total, 1)
        shape = Shape(batch=min(t.batch_size, report.rows_packed), length=length, trained_per_row=math.ceil(length * share))
        per_epoch_tokens = report.rows_packed * d.max_seq_length
    else:
        shape = Shape(batch=batch, length=report.tokens.maximum, trained_per_row=report.trained.maximum)
        per_epoch_tokens = report.tokens.total / max(1 - report.padding_unpacked, 1e-9)
    if t.epochs is not None:
        epochs = t.epochs
    else:
        epochs = t.max_steps / max(report.steps_per_epoch, 1)
    return {"examples": len(lengths), "tokens_per_epoch": report.tokens.total, "trained_tokens_per_epoch": report.trained.total,
            "processed_tokens_per_epoch": per_epoch_tokens, "epochs": epochs, "steps_per_epoch": report.steps_per_epoch,
            "shape": shape, "packed": packed, "lengths": lengths, "report": report}


def _prompt_tokens(config: Config, tokenizer) -> dict | None:
    """Mean prompt tokens per request of the evaluation cases: as they are (the tuned model), with the few-shot
    examples, and with the retrieved ones (what the baselines need in every request)."""
    from trainer.data.templates import resolve_template
    from trainer.evaluation.prompts import few_shot_messages, pick_shots
    from trainer.evaluation.retrieval import Retriever
    from trainer.evaluation.runner import eval_cases
    from trainer.generate import render_prompt

    try:
        cases, pool = eval_cases(config)
    except UserError:  # no chat cases (plain text data): nothing to compare
        return None
    template = resolve_template(config.data.chat_template, tokenizer).jinja if config.data.format != "text" else None
    e = config.evaluation

    def mean_tokens(conversations) -> float:
        return sum(len(tokenizer(render_prompt(tokenizer, c, template), add_special_tokens=False)["input_ids"])
                   for c in conversations) / len(conversations)

    shots = pick_shots(pool, e.few_shot, config.training.seed)
    retriever = Retriever(pool, e.retrieval.k, e.retrieval.embedding_model)
    retrieved = retriever.shots(cases)
    return {"cases": len(cases), "tuned": mean_tokens([list(c.messages) for c in cases]),
            "few_shot": mean_tokens([few_shot_messages(c, shots) for c in cases]), "few_shot_k": len(shots),
            "retrieval": mean_tokens([few_shot_messages(c, r) for c, r in zip(cases, retrieved)]), "retrieval_k": retriever.k}


def _recorded() -> dict[str, float]:
    """What earlier runs measured on this machine: throughputs and times (trainer.rundir.record_throughput)."""
    import json

    from trainer.data.report import throughput_file

    try:
        with open(throughput_file(), encoding="utf-8") as handle:
            table = json.load(handle)
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


@functools.lru_cache(maxsize=8)
def _architecture(model):
    """The architecture of config.model, read once per process (the web UI re-plans on every change of the form)."""
    return architecture(read_model_config(model))


def make_plan(config: Config, requests: int | None = None, price_per_million: float | None = None, gpus_file: str | None = None) -> dict:
    from trainer.data.report import throughput_key
    from trainer.hardware import Hardware
    from trainer.models import native_bf16

    arch = _architecture(config.model)
    count = count_parameters(arch, config)
    device = Hardware.detect().device(config.backend.peft.device)
    precision = precision_for(config, device, native_bf16(device) if device in ("cpu", "cuda") else False)
    tokenizer = _local_tokenizer(config)
    data = _data_side(config, tokenizer) if tokenizer is not None else None
    t, d = config.training, config.data
    shape = data["shape"] if data else Shape(t.batch_size, d.max_seq_length, d.max_seq_length)
    file_bytes = _checkpoint_bytes(config, arch.total)
    memory = estimate_memory(arch, count, config, device, precision, shape, file_bytes)
    at_max = estimate_memory(arch, count, config, device, precision, Shape(t.batch_size, d.max_seq_length, d.max_seq_length), file_bytes)

    plan: dict = {
        "model": {"name_or_path": config.model.name_or_path, "type": arch.model_type, "layers": arch.layers,
                  "hidden_size": arch.hidden_size, "vocab_size": arch.vocab_size},
        "method": t.method,
        "parameters": {**count.to_dict(), "trainable_share": count.trainable / count.total},
        "device": device,
        "precision": {"weights": "nf4" if t.method == "qlora" else precision.weights, "compute": precision.compute},
        "shape": {"micro_batch": shape.batch, "tokens_per_row": shape.length, "trained_per_row": shape.trained_per_row,
                  "from": "the data's longest batch" if data else "max_seq_length (the data's tokens are not known: tokenizer not local)"},
        "memory": memory.to_dict(),
        "memory_at_max_length": {"peak_bytes": at_max.peak, "tokens_per_row": d.max_seq_length},
    }
    table = load_gpus(gpus_file)
    processed = None
    if data:
        processed = data["processed_tokens_per_epoch"] * data["epochs"]
    flops, why = flops_per_token(count.base, t.method, t.gradient_checkpointing)
    rows = []
    for gpu in table.gpus:
        gpu_precision = precision_for(config, "cuda", gpu.bf16)
        if gpu_precision.compute == "float32" and t.precision == "auto":
            gpu_precision = Precision(gpu_precision.weights, "float16")  # fp16 mixed precision where bf16 is missing
        limit = gpu.memory_gib * GIB

        def fits(batch: int, checkpointing: bool, gpu_precision=gpu_precision, limit=limit) -> bool:
            trial = Shape(batch, shape.length, shape.trained_per_row)
            return estimate_memory(arch, count, config, "cuda", gpu_precision, trial, None, checkpointing).peak <= limit

        peak = estimate_memory(arch, count, config, "cuda", gpu_precision, shape, None).peak
        best = largest_batch(lambda b: fits(b, t.gradient_checkpointing), shape.batch)
        with_checkpointing = largest_batch(lambda b: fits(b, True), shape.batch) if not best and not t.gradient_checkpointing else None
        row = {"gpu": gpu.name, "memory_gib": gpu.memory_gib, "peak_gib": peak / GIB, "fits": peak <= limit,
               "micro_batch": best, "micro_batch_with_checkpointing": with_checkpointing}
        if processed is not None:
            seconds = processed * flops / (gpu.tflops * 1e12 * table.utilisation)
            row.update(hours=seconds / 3600, cost=seconds / 3600 * gpu.price_per_hour)
        rows.append(row)
    plan["gpus"] = {"prices_taken": table.prices_taken, "currency": table.currency, "utilisation": table.utilisation, "rows": rows}
    plan["time"] = {"flops_per_token": flops, "flops_rule": why, "processed_tokens": processed, "measured_here_seconds": None}
    here = time_here(_recorded(), throughput_key(config), data["trained_tokens_per_epoch"] * data["epochs"], count.base,
                     config.evaluation.after_training) if data else None
    if here is not None:
        plan["time"].update(measured_here_seconds=here.training_seconds, measured_here_from=here.training_from,
                            overhead_here_seconds=here.overhead_seconds, evaluation_here_seconds=here.evaluation_seconds,
                            total_here_seconds=here.total_seconds)
    if config.backend.name == "autotrain":
        plan["time"]["note"] = ("AutoTrain packs the examples into rows of block_size (data.max_seq_length) tokens, so it "
                                "processes rows x block_size tokens, padding included; the token count above is that.")
    if data:
        epochs_openai, billed = openai_billed_tokens(data["lengths"])
        plan["data"] = {"examples": data["examples"], "tokens_per_epoch": data["tokens_per_epoch"],
                        "trained_tokens_per_epoch": data["trained_tokens_per_epoch"], "epochs": data["epochs"],
                        "trained_tokens": data["trained_tokens_per_epoch"] * data["epochs"], "sufficiency": sufficiency(data["examples"]),
                        "openai_default_epochs": epochs_openai, "openai_billed_tokens": billed}
        prompts = _prompt_tokens(config, tokenizer)
        if prompts:
            hosting = {"prompt_tokens": prompts}
            if requests and price_per_million is not None:
                hosting.update(requests_per_month=requests, price_per_million=price_per_million,
                               saved_per_month={k: monthly_saving(prompts["tuned"], prompts[k], requests, price_per_million)
                                                for k in ("few_shot", "retrieval")})
            plan["hosting"] = hosting
    return plan


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min" if hours * 60 >= 0.1 else f"{hours * 3600:.0f} s"


def render_plan(plan: dict) -> str:
    p, m = plan["parameters"], plan["memory"]
    def gib(b: float) -> str:
        return f"{b / GIB:.2f} GiB"

    out = [f"Model: {plan['model']['name_or_path']} ({plan['model']['type']}, {plan['model']['layers']} layers)",
           f"Parameters: {p['total']:,} in all, {p['trainable']:,} trainable ({p['trainable_share']:.2%}) with {plan['method']}"
           + (f" on {p['adapted_layers']} linear layers" if p["adapted_layers"] else ""), ""]
    s = plan["shape"]
    out.append(f"Memory on {plan['device']} (weights {plan['precision']['weights']}, compute {plan['precision']['compute']}; "
               f"micro-batch {s['micro_batch']} x {s['tokens_per_row']} tokens, {s['trained_per_row']} trained per row: {s['from']}):")
    for name, value in m["parts_bytes"].items():
        out.append(f"  {name:<24}{gib(value):>12}")
    other = m.get("activations_without_checkpointing_bytes", m.get("activations_with_checkpointing_bytes"))
    out.append(f"  {'activations ' + ('without' if m['gradient_checkpointing'] else 'with') + ' checkpointing':<24}{gib(other):>12}  (for comparison)")
    out.append(f"  {'loading peak':<24}{gib(m['loading_bytes']):>12}")
    out.append(f"  {'PEAK':<24}{gib(m['peak_bytes']):>12}   (at max_seq_length {plan['memory_at_max_length']['tokens_per_row']}: "
               f"{gib(plan['memory_at_max_length']['peak_bytes'])})")
    g = plan["gpus"]
    out += ["", f"GPUs (prices in {g['currency']}/hour as of {g['prices_taken']}, {g['utilisation']:.0%} utilisation; edit trainer/plan/gpus.yaml):"]
    for r in g["rows"]:
        batch = f"micro-batch {r['micro_batch']}" if r["micro_batch"] else (
            f"only with gradient checkpointing, micro-batch {r['micro_batch_with_checkpointing']}" if r.get("micro_batch_with_checkpointing") else "does not fit")
        cost = f", {_duration(r['hours'])}, {r['cost']:.2f} {g['currency']}" if "hours" in r else ""
        out.append(f"  {r['gpu']:<11}{r['memory_gib']:>5.0f} GiB  peak {r['peak_gib']:6.2f} GiB  {'fits' if r['fits'] else 'too big'}: {batch}{cost}")
    t = plan["time"]
    out += ["", f"Time: {t['flops_per_token'] / 1e9:.2f} GFLOP per processed token ({t['flops_rule']})"
            + (f"; {t['processed_tokens']:,.0f} tokens processed" if t["processed_tokens"] else "")]
    if t.get("measured_here_seconds"):
        parts = [f"{t['measured_here_seconds'] / 60:.1f} min of training ({t['measured_here_from']})"]
        if t.get("overhead_here_seconds") is not None:
            parts.append(f"{t['overhead_here_seconds'] / 60:.1f} min loading and saving")
        if t.get("evaluation_here_seconds") is not None:
            parts.append(f"{t['evaluation_here_seconds'] / 60:.1f} min evaluating")
        out.append(f"  on this machine: {t['total_here_seconds'] / 60:.1f} min in all: " + ", ".join(parts)
                   + " (as earlier runs here took)")
    else:
        out.append("  on this machine: not known yet (the first run here measures its throughput)")
    if t.get("note"):
        out.append(f"  {t['note']}")
    if "data" in plan:
        d = plan["data"]
        out += ["", f"Data: {d['examples']} training examples, {d['tokens_per_epoch']:,} tokens per epoch "
                    f"({d['trained_tokens_per_epoch']:,} trained), {d['epochs']:g} epoch(s): {d['trained_tokens']:,.0f} trained tokens",
                f"  {d['sufficiency']}",
                f"  OpenAI would bill about {d['openai_billed_tokens']:,} tokens for this file ({d['openai_default_epochs']} epochs by its default rule; counted with this model's tokenizer)"]
    if "hosting" in plan:
        h = plan["hosting"]
        pt = h["prompt_tokens"]
        out += ["", f"Hosting: prompt tokens per request (mean over {pt['cases']} evaluation cases): tuned {pt['tuned']:.0f}, "
                    f"few-shot ({pt['few_shot_k']} examples) {pt['few_shot']:.0f}, retrieval ({pt['retrieval_k']} examples) {pt['retrieval']:.0f}"]
        if "saved_per_month" in h:
            for k, label in (("few_shot", "few-shot prompting"), ("retrieval", "retrieval")):
                out.append(f"  at {h['requests_per_month']:,} requests/month and {h['price_per_million']:g} per million prompt tokens, "
                           f"the tuned model saves {h['saved_per_month'][k]:,.2f} a month against {label}")
        else:
            out.append("  (give --requests N --price-per-million P for the money saved per month)")
    return "\n".join(out)
