"""What `trainer plan` says, as the dictionaries `--json` prints, and the same as text for people.

The shapes are fixed, so each is a TypedDict: make_plan fills them, render_plan and the web UI read them.
"""
from __future__ import annotations

from typing import Required, TypedDict

from trainer.plan.memory import GIB, MemoryDict
from trainer.plan.params import ParameterDict


class ModelInfo(TypedDict):
    name_or_path: str
    type: str
    layers: int
    hidden_size: int
    vocab_size: int


class ParametersInfo(ParameterDict, total=False):
    trainable_share: Required[float]
    per_token: int  # a mixture of experts: the parameters a token goes through
    experts: str  # "4 of 32": the experts a token is routed to, of those in a layer


class PrecisionInfo(TypedDict):
    weights: str  # nf4 for QLoRA, else the dtype of the frozen weights
    compute: str


# "from" is a keyword, so this one is declared by the call form
ShapeInfo = TypedDict("ShapeInfo", {"micro_batch": int, "tokens_per_row": int, "trained_per_row": int, "from": str})


class AtMaxLength(TypedDict):
    peak_bytes: float
    tokens_per_row: int


class _GpuRow(TypedDict):
    gpu: str
    memory_gib: float
    peak_gib: float
    fits: bool
    micro_batch: int  # the largest that fits, 0 if none
    micro_batch_with_checkpointing: int | None  # when none fits without gradient checkpointing


class GpuRow(_GpuRow, total=False):  # time and money, when the data's tokens are known
    hours: float  # on one GPU
    cost: float
    run_hours: float  # on every GPU of the run (nodes x gpus_per_node), where it has more than one (cost.across_gpus)
    run_cost: float


class GpusInfo(TypedDict):
    prices_taken: str
    currency: str
    utilisation: float
    nodes: int  # distributed.nodes (the most of an elastic range)
    gpus_per_node: int  # distributed.num_processes, 1 when it is empty
    rows: list[GpuRow]


class _TimeInfo(TypedDict):
    flops_per_token: float
    flops_rule: str
    processed_tokens: float | None
    measured_here_seconds: float | None


class TimeInfo(_TimeInfo, total=False):
    note: str
    measured_here_from: str  # which earlier run's throughput (trainer.plan.cost.time_here)
    overhead_here_seconds: float | None
    evaluation_here_seconds: float | None
    total_here_seconds: float


class DataInfo(TypedDict):
    examples: int
    tokens_per_epoch: int
    trained_tokens_per_epoch: int
    epochs: float
    trained_tokens: float
    sufficiency: str
    openai_default_epochs: int
    openai_billed_tokens: int


class PromptTokens(TypedDict):
    """Mean prompt tokens per request of the evaluation cases, for each way of asking."""

    cases: int
    tuned: float
    few_shot: float
    few_shot_k: int
    retrieval: float
    retrieval_k: int


class _Hosting(TypedDict):
    prompt_tokens: PromptTokens


class Hosting(_Hosting, total=False):  # with --requests and --price-per-million
    requests_per_month: int
    price_per_million: float
    saved_per_month: dict[str, float]  # against "few_shot" and "retrieval"


class _Plan(TypedDict):
    model: ModelInfo
    method: str
    parameters: ParametersInfo
    device: str
    precision: PrecisionInfo
    shape: ShapeInfo
    memory: MemoryDict
    memory_at_max_length: AtMaxLength
    gpus: GpusInfo
    time: TimeInfo


class Plan(_Plan, total=False):  # data and hosting where the tokenizer is on this machine
    data: DataInfo
    hosting: Hosting


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min" if hours * 60 >= 0.1 else f"{hours * 3600:.0f} s"


def _gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def render_plan(plan: Plan) -> str:
    p = plan["parameters"]
    out = [f"Model: {plan['model']['name_or_path']} ({plan['model']['type']}, {plan['model']['layers']} layers)",
           f"Parameters: {p['total']:,} in all" + (f" ({p['per_token']:,} per token: {p['experts']} experts)" if "per_token" in p else "")
           + f", {p['trainable']:,} trainable ({p['trainable_share']:.2%}) with {plan['method']}"
           + (f" on {p['adapted_layers']} linear layers" if p["adapted_layers"] else ""), ""]
    out += _memory_lines(plan)
    out += ["", *gpu_lines(plan["gpus"])]
    t = plan["time"]
    out += ["", f"Time: {t['flops_per_token'] / 1e9:.2f} GFLOP per processed token ({t['flops_rule']})"
            + (f"; {t['processed_tokens']:,.0f} tokens processed" if t["processed_tokens"] else "")]
    measured = t["measured_here_seconds"]
    if measured:
        parts = [f"{measured / 60:.1f} min of training ({t.get('measured_here_from', '')})"]
        if t.get("overhead_here_seconds") is not None:
            parts.append(f"{(t.get('overhead_here_seconds') or 0) / 60:.1f} min loading and saving")
        if t.get("evaluation_here_seconds") is not None:
            parts.append(f"{(t.get('evaluation_here_seconds') or 0) / 60:.1f} min evaluating")
        out.append(f"  on this machine: {t.get('total_here_seconds', measured) / 60:.1f} min in all: " + ", ".join(parts)
                   + " (as earlier runs here took)")
    else:
        out.append("  on this machine: not known yet (the first run here measures its throughput)")
    if t.get("note"):
        out.append(f"  {t['note']}")
    if "data" in plan:
        d = plan["data"]
        out += ["", f"Data: {d['examples']} training examples, {d['tokens_per_epoch']:,} tokens per epoch "
                    f"({d['trained_tokens_per_epoch']:,} trained), {_epochs(d['epochs'])}: {d['trained_tokens']:,.0f} trained tokens",
                f"  {d['sufficiency']}",
                f"  OpenAI would bill about {d['openai_billed_tokens']:,} tokens for this file ({d['openai_default_epochs']} epochs by its default rule; counted with this model's tokenizer)"]
    if "hosting" in plan:
        out += _hosting_lines(plan["hosting"])
    return "\n".join(out)


def gpu_lines(g: GpusInfo) -> list[str]:
    """The GPU table of a plan: each GPU's fit, and (with the data's tokens) the time and cost on it and across the run's GPUs."""
    out = [f"GPUs (prices in {g['currency']}/hour as of {g['prices_taken']}, {g['utilisation']:.0%} utilisation; edit trainer/plan/gpus.yaml):"]
    for r in g["rows"]:
        batch = f"micro-batch {r['micro_batch']}" if r["micro_batch"] else (
            f"only with gradient checkpointing, micro-batch {r['micro_batch_with_checkpointing']}" if r.get("micro_batch_with_checkpointing") else "does not fit")
        cost = f", {_duration(r['hours'])}, {r['cost']:.2f} {g['currency']}" if "hours" in r else ""
        if "run_hours" in r:
            cost += f"; {across(g)}: {_duration(r['run_hours'])}, {r['run_cost']:.2f} {g['currency']}"
        out.append(f"  {r['gpu']:<11}{r['memory_gib']:>5.0f} GiB  peak {r['peak_gib']:6.2f} GiB  {'fits' if r['fits'] else 'too big'}: {batch}{cost}")
    if any("run_hours" in r for r in g["rows"]):
        out.append(f"  ({across(g)}: the time shared out as if scaling were perfect, so the same GPU-hours; the "
                   "gradients' exchange between GPUs and machines makes it longer)")
    return out


def across(gpus: GpusInfo) -> str:
    """"on 2 nodes x 4 GPUs", "on 4 GPUs": where the run's time and cost (run_hours, run_cost) are reckoned."""
    per_node = f"{gpus['gpus_per_node']} GPU{'s' if gpus['gpus_per_node'] > 1 else ''}"
    return f"on {gpus['nodes']} nodes x {per_node}" if gpus["nodes"] > 1 else f"on {per_node}"


def _memory_lines(plan: Plan) -> list[str]:
    m, s = plan["memory"], plan["shape"]
    out = [f"Memory on {plan['device']} (weights {plan['precision']['weights']}, compute {plan['precision']['compute']}; "
           f"micro-batch {s['micro_batch']} x {s['tokens_per_row']} tokens, {s['trained_per_row']} trained per row: {s['from']}):"]
    for name, value in m["parts_bytes"].items():
        out.append(f"  {name:<24}{_gib(value):>12}")
    other = m["activations_without_checkpointing_bytes"] if m["gradient_checkpointing"] else m["activations_with_checkpointing_bytes"]
    out.append(f"  {'activations ' + ('without' if m['gradient_checkpointing'] else 'with') + ' checkpointing':<24}{_gib(other):>12}  (for comparison)")
    out.append(f"  {'loading peak':<24}{_gib(m['loading_bytes']):>12}")
    out.append(f"  {'PEAK':<24}{_gib(m['peak_bytes']):>12}   (at max_seq_length {plan['memory_at_max_length']['tokens_per_row']}: "
               f"{_gib(plan['memory_at_max_length']['peak_bytes'])})")
    return out


def _hosting_lines(h: Hosting) -> list[str]:
    pt = h["prompt_tokens"]
    out = ["", f"Hosting: prompt tokens per request (mean over {pt['cases']} evaluation cases): tuned {pt['tuned']:.0f}, "
               f"few-shot ({pt['few_shot_k']} examples) {pt['few_shot']:.0f}, retrieval ({pt['retrieval_k']} examples) {pt['retrieval']:.0f}"]
    if "saved_per_month" in h:
        for k, label in (("few_shot", "few-shot prompting"), ("retrieval", "retrieval")):
            out.append(f"  at {h['requests_per_month']:,} requests/month and {h['price_per_million']:g} per million prompt tokens, "
                       f"the tuned model saves {h['saved_per_month'][k]:,.2f} a month against {label}")
    else:
        out.append("  (give --requests N --price-per-million P for the money saved per month)")
    return out


def _epochs(epochs: float) -> str:
    """3 epochs, 1.5 epochs, 15% of an epoch (max_steps short of one: never "0.153846 epoch(s)")."""
    if epochs < 1:
        return f"{epochs:.0%} of an epoch" if epochs >= 0.01 else "under 1% of an epoch"
    return f"{epochs:.3g} epoch" + ("" if epochs == 1 else "s")
