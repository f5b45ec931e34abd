"""AutoTrain Advanced's LLM YAML, read as ours.

`FIELDS` is the one table of how AutoTrain's keys map to ours; the reverse
direction (writing AutoTrain YAML for the autotrain backend) reads the same
table. The defaults are AutoTrain 0.8.36's own (trainers/clm/params.py), so a
translated file trains what AutoTrain would have trained.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from trainer.config.yaml_loader import Document

SFT_TASKS = {"llm", "llm-sft", "llm-generic", "lm_training", "llm_training", "llm_finetuning"}
OTHER_LLM_TASKS = {"llm-dpo", "llm-orpo", "llm-reward", "llm-grpo"}


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Field:
    autotrain: str  # dotted key in AutoTrain's YAML
    ours: str | None  # dotted key in ours; None: read by a special case below
    default: Any = None  # AutoTrain's default when the key is absent (None: leave ours)
    to_ours: Callable[[Any], Any] = _same


def _optimizer(value: str) -> str:
    return {"adamw_torch": "adamw", "adamw_hf": "adamw", "adamw_torch_fused": "adamw", "adamw_bnb_8bit": "adamw_8bit",
            "paged_adamw_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit", "sgd": "sgd"}.get(value, value)


def _precision(value: Any) -> str:
    return {None: "fp32", "none": "fp32", "fp16": "fp16", "bf16": "bf16"}.get(value, value)


def _target_modules(value: Any) -> Any:
    if isinstance(value, str) and value != "all-linear":
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


FIELDS: list[Field] = [
    Field("base_model", "model.name_or_path"),
    Field("project_name", "output.dir"),
    Field("log", "logging.report_to", "none"),
    Field("data.chat_template", "data.chat_template"),
    Field("params.lr", "training.learning_rate", 3e-5),
    Field("params.epochs", "training.epochs", 1),
    Field("params.batch_size", "training.batch_size", 2),
    Field("params.gradient_accumulation", "training.gradient_accumulation", 4),
    Field("params.warmup_ratio", "training.warmup_ratio", 0.1),
    Field("params.weight_decay", "training.weight_decay", 0.0),
    Field("params.max_grad_norm", "training.max_grad_norm", 1.0),
    Field("params.seed", "training.seed", 42),
    Field("params.scheduler", "training.scheduler", "linear"),
    Field("params.optimizer", "training.optimizer", "adamw_torch", _optimizer),
    Field("params.mixed_precision", "training.precision", None, _precision),
    Field("params.lora_r", "training.lora.r", 16),
    Field("params.lora_alpha", "training.lora.alpha", 32),
    Field("params.lora_dropout", "training.lora.dropout", 0.05),
    Field("params.target_modules", "training.lora.target_modules", "all-linear", _target_modules),
    Field("params.merge_adapter", "output.merge_adapter", False),
    Field("params.model_max_length", "data.max_seq_length", 2048),
    Field("params.disable_gradient_checkpointing", "training.gradient_checkpointing", False, lambda v: not v),
    Field("params.logging_steps", "logging.log_every", None, lambda v: v if v and v > 0 else 10),
    Field("params.save_total_limit", "training.keep_last", None),
    Field("params.use_flash_attention_2", "model.attn_implementation", None, lambda v: "flash_attention_2" if v else "auto"),
    # Read by the special cases in translate():
    Field("task", None),
    Field("backend", None),
    Field("data.path", None),
    Field("data.train_split", None),
    Field("data.valid_split", None),
    Field("data.column_mapping.text_column", None),
    Field("params.peft", None),
    Field("params.quantization", None),
    Field("params.block_size", None),
    Field("params.trainer", None),
    Field("hub.username", None),
    Field("hub.token", None),
    Field("hub.push_to_hub", None),
]

# AutoTrain settings we have no use for, and why.
IGNORED = {
    "params.padding": "trainer pads on the side each step needs",
    "params.add_eos_token": "trainer always trains the end-of-turn token of each answer",
    "params.auto_find_batch_size": "set training.batch_size instead",
    "params.evaluation_strategy": "trainer evaluates every training.eval_every steps or each epoch",
    "params.save_strategy": "trainer saves every training.save_every steps or each epoch",
    "params.unsloth": "not supported; the peft backend is used",
    "params.distributed_backend": "see the distributed settings",
}


def is_autotrain_config(data: dict) -> bool:
    return "task" in data and ("base_model" in data or "params" in data or "project_name" in data)


def _get(data: dict, dotted_key: str) -> Any:
    node: Any = data
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _put(data: dict, dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


_MISSING = object()


def translate(source: dict) -> tuple[dict, list[str], dict[str, str]]:
    """AutoTrain YAML data -> (our data, notices, {our key: AutoTrain key it came from}).

    Raises ValueError with a user-facing message for what cannot be translated at all.
    """
    task = str(source.get("task"))
    if task in OTHER_LLM_TASKS or source.get("params", {}).get("trainer", "sft") not in ("sft", "default"):
        raise ValueError(f"AutoTrain task {task!r} is not supervised fine-tuning; trainer translates llm-sft configs only.")
    if task not in SFT_TASKS:
        raise ValueError(f"AutoTrain task {task!r} is not a language-model task; trainer translates llm-sft configs only.")
    ours: dict = {}
    origin: dict[str, str] = {}
    notices = ["this is an AutoTrain Advanced config; it was translated to trainer's format (see `trainer convert --from autotrain`)."]
    for field in FIELDS:
        if field.ours is None:
            continue
        value = _get(source, field.autotrain)
        if value is _MISSING:
            if field.default is None:
                continue
            value = field.default
        _put(ours, field.ours, field.to_ours(value))
        origin[field.ours] = field.autotrain

    data = source.get("data", {}) if isinstance(source.get("data"), dict) else {}
    path = data.get("path", "data")
    for split_key, our_key, fallback in (("train_split", "data.train", "train"), ("valid_split", "data.validation", None)):
        split = data.get(split_key, fallback)
        if split:
            _put(ours, our_key, _data_ref(str(path), str(split)))
            origin[our_key] = f"data.{split_key}"
    if ours["data"].get("validation") is None:
        _put(ours, "data.validation_split", 0.0)  # AutoTrain without valid_split evaluates nothing
    template = data.get("chat_template")
    column = _get(source, "data.column_mapping.text_column")
    if template in (None, "none"):
        ours["data"].pop("chat_template", None)
        _put(ours, "data.format", "text")
        _put(ours, "data.train_on", "all")
        if column not in (_MISSING, "text"):
            _put(ours, "data.columns.text", column)
    elif column not in (_MISSING, "messages"):
        _put(ours, "data.columns.messages", column)

    params = source.get("params", {}) if isinstance(source.get("params"), dict) else {}
    if params.get("peft", False):
        quantization = params.get("quantization", "int4")
        method = {"int4": "qlora", None: "lora", "none": "lora"}.get(quantization)
        if method is None:
            raise ValueError(f"params.quantization {quantization!r} has no trainer equivalent; use int4 (qlora) or none (lora).")
        _put(ours, "training.method", method)
    else:
        _put(ours, "training.method", "full")
        for key in ("r", "alpha", "dropout", "target_modules"):
            ours["training"]["lora"].pop(key, None)
    origin["training.method"] = "params.peft"
    block = params.get("block_size", -1)
    if isinstance(block, int) and block > 0:
        _put(ours, "data.max_seq_length", block)
        origin["data.max_seq_length"] = "params.block_size"

    hub = source.get("hub", {}) if isinstance(source.get("hub"), dict) else {}
    if hub.get("push_to_hub"):
        username = str(hub.get("username") or "")
        if username.startswith("${"):
            username = os.environ.get(username.strip("${}"), "")
        _put(ours, "output.push_to_hub", {"repo_id": f"{username or 'YOUR-NAME'}/{source.get('project_name', 'model')}"})
        origin["output.push_to_hub"] = "hub.push_to_hub"
    if hub.get("token"):
        notices.append("hub.token is not copied: trainer reads the token from the HF_TOKEN environment variable only.")

    known = {f.autotrain for f in FIELDS}
    for key in _leaves(source):
        if key in IGNORED:
            notices.append(f"AutoTrain's {key} is not used: {IGNORED[key]}.")
        elif key not in known and not key.startswith(("data.column_mapping.", "hub.")):
            notices.append(f"AutoTrain's {key} has no trainer equivalent and is not used.")
    return ours, notices, origin


def _data_ref(path: str, split: str) -> str:
    """AutoTrain names data by folder + split; a local folder holds <split>.csv or <split>.jsonl."""
    if os.path.isdir(os.path.expanduser(path)) or path.startswith((".", "/", "~")):
        for suffix in (".jsonl", ".csv", ".json", ".parquet"):
            candidate = os.path.join(path, split + suffix)
            if os.path.exists(os.path.expanduser(candidate)):
                return candidate
        return os.path.join(path, split + ".jsonl")
    return f"{path}:{split}"


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, name + "."))
        else:
            out.append(name)
    return out


def translate_document(doc: Document) -> tuple[Document, list[str]]:
    """Translate an AutoTrain document, keeping each value's line by way of the key it came from."""
    from trainer.errors import UserError

    try:
        data, notices, origin = translate(doc.data)
    except ValueError as exc:
        raise UserError([doc.problem(("task",), str(exc))]) from None
    out = Document(data=data, file=doc.file, problems=list(doc.problems))
    out.marks[()] = doc.marks.get((), (1, 1))
    for ours, theirs in origin.items():
        theirs_path = tuple(theirs.split("."))
        mark = doc.mark(theirs_path)
        out.aliases[tuple(ours.split("."))] = theirs
        for i in range(1, len(ours.split(".")) + 1):
            out.marks.setdefault(tuple(ours.split(".")[:i]), mark)
        if theirs_path in doc.env_refs:
            out.env_refs[tuple(ours.split("."))] = doc.env_refs[theirs_path]
    return out, notices
