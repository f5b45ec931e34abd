"""The one table of how AutoTrain Advanced's LLM keys map to ours, in both directions.

`FIELDS` is read by `convert.translate` (AutoTrain's YAML -> ours: `trainer convert`, or a file given to
`trainer --config`) and by `params.export` (ours -> AutoTrain's, for the backend and `trainer export --to
autotrain`). The defaults are AutoTrain 0.8.36's own (trainers/clm/params.py), so a translated file trains what
AutoTrain would have trained. docs/autotrain.md shows the same table (`mapping_table`; a test keeps the two in step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Field:
    autotrain: str  # dotted key in AutoTrain's YAML
    ours: str | None  # dotted key in ours; None: read by a special case below
    default: Any = None  # AutoTrain's default when the key is absent (None: leave ours)
    to_ours: Callable[[Any], Any] = _same
    to_autotrain: Callable[[Any], Any] | None = _same  # None: export() writes it (or leaves it out) itself
    note: str = ""  # for the table in docs/autotrain.md
    objectives: tuple[str, ...] = ("sft", "dpo", "orpo")  # the objectives (AutoTrain trainers) it belongs to


def _optimizer(value: str) -> str:
    return {"adamw_torch": "adamw", "adamw_hf": "adamw", "adamw_torch_fused": "adamw", "adamw_bnb_8bit": "adamw_8bit",
            "paged_adamw_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit", "sgd": "sgd"}.get(value, value)


def _precision(value: Any) -> str:
    return {None: "fp32", "none": "fp32", "fp16": "fp16", "bf16": "bf16"}.get(value, value)


OPTIMIZER_OUT = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "sgd": "sgd"}


def _target_modules(value: Any) -> Any:
    if isinstance(value, str) and value != "all-linear":
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


FIELDS: list[Field] = [
    Field("base_model", "model.name_or_path", to_autotrain=None,
          note='a Hub id as is; a local folder or .gguf file as a folder transformers 4.48 reads'),  # export: a hub id, or the materialised local copy
    Field("project_name", "output.dir", to_autotrain=None,
          note="the run directory's name, as letters, digits and hyphens, at most 50 characters"),  # export: project_name(output.dir)
    Field("log", "logging.report_to", "none"),
    Field("data.chat_template", "data.chat_template", to_autotrain=None,
          note='`tokenizer` with a messages column; otherwise trainer renders the text itself and sends none'),  # export: set by the data hand-over
    Field("params.lr", "training.learning_rate", 3e-5),
    Field("params.epochs", "training.epochs", 1, to_autotrain=None,
          note='whole epochs: a fraction is rounded up; max_steps cannot be expressed'),  # export: whole epochs only
    Field("params.batch_size", "training.batch_size", 2),
    Field("params.gradient_accumulation", "training.gradient_accumulation", 4),
    Field("params.warmup_ratio", "training.warmup_ratio", 0.1),
    Field("params.weight_decay", "training.weight_decay", 0.0),
    Field("params.max_grad_norm", "training.max_grad_norm", 1.0),
    Field("params.seed", "training.seed", 42),
    Field("params.scheduler", "training.scheduler", "linear"),
    Field("params.optimizer", "training.optimizer", "adamw_torch", _optimizer, OPTIMIZER_OUT.get,
          note='adamw = adamw_torch, adamw_8bit = adamw_bnb_8bit, sgd = sgd'),
    Field("params.mixed_precision", "training.precision", None, _precision, None,
          note='auto becomes bf16 where the machine computes in it natively, else none'),  # export: resolved for the machine
    Field("params.lora_r", "training.lora.r", 16),
    Field("params.lora_alpha", "training.lora.alpha", 32, to_autotrain=round,
          note="AutoTrain takes whole numbers only"),
    Field("params.lora_dropout", "training.lora.dropout", 0.05),
    Field("params.target_modules", "training.lora.target_modules", "all-linear", _target_modules,
          lambda v: v if isinstance(v, str) else ",".join(v)),
    # AutoTrain's merge deletes the adapter; trainer merges after collecting the result and keeps both.
    Field("params.merge_adapter", "output.merge_adapter", False, to_autotrain=lambda v: False,
          note="always false for AutoTrain: its merge deletes the adapter; trainer merges the collected adapter itself"),
    Field("params.model_max_length", "data.max_seq_length", 2048, note="also written as params.block_size (AutoTrain packs to it)"),
    Field("params.disable_gradient_checkpointing", "training.gradient_checkpointing", False, lambda v: not v, lambda v: not v,
          note="negated"),
    Field("params.logging_steps", "logging.log_every", None, lambda v: v if v and v > 0 else 10),
    Field("params.save_total_limit", "training.keep_last", None),
    Field("params.use_flash_attention_2", "model.attn_implementation", None, lambda v: "flash_attention_2" if v else "auto",
          lambda v: v == "flash_attention_2"),
    Field("params.dpo_beta", "training.dpo.beta", 0.1, objectives=("dpo",),
          note="llm-dpo only: llm-orpo does not pass it on (its lambda is always 0.1, `training.orpo.weight`)"),
    # Read by the special cases in translate(), written by export():
    Field("task", None),
    Field("backend", None),
    Field("data.path", None),
    Field("data.train_split", None),
    Field("data.valid_split", None),
    Field("data.column_mapping.text_column", None),
    Field("data.column_mapping.rejected_text_column", None),
    Field("data.column_mapping.prompt_text_column", None),
    Field("params.max_prompt_length", None),
    Field("params.max_completion_length", None),
    Field("params.model_ref", None),
    Field("params.peft", None),
    Field("params.quantization", None),
    Field("params.block_size", None),
    Field("params.trainer", None),
    Field("hub.username", None),
    Field("hub.token", None),
    Field("hub.push_to_hub", None),
]


def mapping_table() -> str:
    """The FIELDS table as Markdown, for docs/autotrain.md."""
    def shown(value: Any) -> str:
        return "" if value is None else f"`{value}`"

    rows = ["| AutoTrain key | trainer key | AutoTrain 0.8.36 default | notes |", "| --- | --- | --- | --- |"]
    for field in FIELDS:
        if field.ours is not None:
            rows.append(f"| `{field.autotrain}` | `{field.ours}` | {shown(field.default)} | {field.note} |")
    return "\n".join(rows) + "\n"
