"""AutoTrain Advanced's LLM YAML, read as ours and written from ours.

`FIELDS` is the one table of how AutoTrain's keys map to ours, in both
directions: `translate` reads an AutoTrain file (`trainer convert`, or a file
given to `trainer --config`), `export` writes one for the autotrain backend
(`trainer export --to autotrain`). The defaults are AutoTrain 0.8.36's own
(trainers/clm/params.py), so a translated file trains what AutoTrain would have
trained. docs/autotrain.md shows the same table (a test keeps the two in step).
What is particular to llm-dpo and llm-orpo lives in autotrain_preference.py;
what AutoTrain cannot do the way a config asks, in autotrain_differences.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from trainer.config.autotrain_differences import whole_epochs
from trainer.config.autotrain_preference import PREFERENCE_TASKS, export_preference, section, translate_preference
from trainer.config.model import Config
from trainer.config.yaml_loader import Document
from trainer.patterns import MISSING, get_path, set_path

SFT_TASKS = {"llm", "llm-sft", "llm-generic", "lm_training", "llm_training", "llm_finetuning"}
OTHER_LLM_TASKS = {"llm-reward": "reward modelling", "llm-grpo": "GRPO"}
TRAINERS = {"sft": "sft", "default": "sft", "generic": "sft", "dpo": "dpo", "orpo": "orpo"}  # params.trainer -> objective


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


PREFERENCE_ONLY = {"params.dpo_beta", "params.max_prompt_length", "params.max_completion_length", "params.model_ref"}


def is_autotrain_config(data: dict) -> bool:
    return "task" in data and ("base_model" in data or "params" in data or "project_name" in data)


def translate(source: dict) -> tuple[dict, list[str], dict[str, str]]:
    """AutoTrain YAML data -> (our data, notices, {our key: AutoTrain key it came from}).

    Raises ValueError with a user-facing message for what cannot be translated at all.
    """
    objective = objective_of(source)
    ours: dict = {}
    origin: dict[str, str] = {}
    notices = ["this is an AutoTrain Advanced config; it was translated to trainer's format (see `trainer convert --from autotrain`)."]
    _translate_fields(source, ours, origin, objective)
    _translate_splits(source, ours, origin)
    if objective == "sft":
        _translate_text(source, ours)
    else:
        notices += translate_preference(source, ours, origin, objective)
    _translate_method(source, ours, origin)
    notices += _translate_hub(source, ours, origin)
    notices += _unused_keys(source, objective)
    return ours, notices, origin


def objective_of(source: dict) -> str:
    """What an AutoTrain LLM file trains: sft, dpo or orpo. ValueError for what trainer does not translate."""
    task = str(source.get("task"))
    known = "trainer translates llm-sft, llm-dpo and llm-orpo configs"
    if task in OTHER_LLM_TASKS:
        raise ValueError(f"AutoTrain task {task!r} ({OTHER_LLM_TASKS[task]}) has no trainer equivalent; {known}.")
    if task not in SFT_TASKS and task not in PREFERENCE_TASKS:
        raise ValueError(f"AutoTrain task {task!r} is not a language-model task; {known}.")
    params = section(source, "params")
    trainer = str(params.get("trainer", PREFERENCE_TASKS.get(task, "sft")))  # AutoTrain's parser: params.trainer wins
    if trainer not in TRAINERS:
        what = "reward modelling" if trainer == "reward" else "not a trainer AutoTrain 0.8.36 knows"
        raise ValueError(f"AutoTrain's params.trainer {trainer!r} ({what}) has no trainer equivalent; {known} "
                         "(params.trainer sft, default, dpo or orpo).")
    return TRAINERS[trainer]


def _translate_fields(source: dict, ours: dict, origin: dict[str, str], objective: str) -> None:
    """The keys of the FIELDS table, with AutoTrain's defaults for those it leaves out."""
    for field in FIELDS:
        if field.ours is None or objective not in field.objectives:
            continue
        value = get_path(source, field.autotrain, MISSING)
        if value is MISSING:
            if field.default is None:
                continue
            value = field.default
        set_path(ours, field.ours, field.to_ours(value))
        origin[field.ours] = field.autotrain


def _translate_splits(source: dict, ours: dict, origin: dict[str, str]) -> None:
    """data.path + splits -> data.train/validation."""
    data = source.get("data", {}) if isinstance(source.get("data"), dict) else {}
    path = data.get("path", "data")
    for split_key, our_key, fallback in (("train_split", "data.train", "train"), ("valid_split", "data.validation", None)):
        split = data.get(split_key, fallback)
        if split:
            set_path(ours, our_key, _data_ref(str(path), str(split)))
            origin[our_key] = f"data.{split_key}"
    if ours["data"].get("validation") is None:
        set_path(ours, "data.validation_split", 0.0)  # AutoTrain without valid_split evaluates nothing


def _translate_text(source: dict, ours: dict) -> None:
    """SFT: the chat template and text column -> format and columns."""
    data = source.get("data", {}) if isinstance(source.get("data"), dict) else {}
    template = data.get("chat_template")
    column = get_path(source, "data.column_mapping.text_column", MISSING)
    if template in (None, "none"):
        ours["data"].pop("chat_template", None)
        set_path(ours, "data.format", "text")
        set_path(ours, "data.train_on", "all")
        if column not in (MISSING, "text"):
            set_path(ours, "data.columns.text", column)
    elif column not in (MISSING, "messages"):
        set_path(ours, "data.columns.messages", column)


def _translate_method(source: dict, ours: dict, origin: dict[str, str]) -> None:
    """params.peft and params.quantization -> training.method; params.block_size -> data.max_seq_length."""
    params = source.get("params", {}) if isinstance(source.get("params"), dict) else {}
    if params.get("peft", False):
        quantization = params.get("quantization", "int4")
        method = {"int4": "qlora", None: "lora", "none": "lora"}.get(quantization)
        if method is None:
            raise ValueError(f"params.quantization {quantization!r} has no trainer equivalent; use int4 (qlora) or none (lora).")
        set_path(ours, "training.method", method)
    else:
        set_path(ours, "training.method", "full")
        for key in ("r", "alpha", "dropout", "target_modules"):
            ours["training"]["lora"].pop(key, None)
    origin["training.method"] = "params.peft"
    block = params.get("block_size", -1)
    if isinstance(block, int) and block > 0:
        set_path(ours, "data.max_seq_length", block)
        origin["data.max_seq_length"] = "params.block_size"


def _translate_hub(source: dict, ours: dict, origin: dict[str, str]) -> list[str]:
    """hub.push_to_hub -> output.push_to_hub; a token is never copied (notices say so)."""
    hub = source.get("hub", {}) if isinstance(source.get("hub"), dict) else {}
    if hub.get("push_to_hub"):
        username = str(hub.get("username") or "")
        if username.startswith("${"):
            username = os.environ.get(username.strip("${}"), "")
        set_path(ours, "output.push_to_hub", {"repo_id": f"{username or 'YOUR-NAME'}/{source.get('project_name', 'model')}"})
        origin["output.push_to_hub"] = "hub.push_to_hub"
    if hub.get("token"):
        return ["hub.token is not copied: trainer reads the token from the HF_TOKEN environment variable only."]
    return []


def _unused_keys(source: dict, objective: str) -> list[str]:
    """A notice for each AutoTrain key trainer does not use, and why."""
    known = {f.autotrain for f in FIELDS}
    notices = []
    for key in _leaves(source):
        if key in IGNORED:
            notices.append(f"AutoTrain's {key} is not used: {IGNORED[key]}.")
        elif key in PREFERENCE_ONLY and objective == "sft":
            notices.append(f"AutoTrain's {key} is not used: it belongs to llm-dpo and llm-orpo, and this file trains llm-sft.")
        elif key not in known and not key.startswith(("data.column_mapping.", "hub.")):
            notices.append(f"AutoTrain's {key} has no trainer equivalent and is not used.")
    return notices


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
            out.marks.setdefault(tuple(ours.split(".")[:i]), mark)  # type: ignore[arg-type]  # None: no line known
        if theirs_path in doc.env_refs:
            out.env_refs[tuple(ours.split("."))] = doc.env_refs[theirs_path]
    return out, notices


# --- ours -> AutoTrain -----------------------------------------------------------------------------------------------

PROJECT_NAME_MAX = 50  # AutoTrain allows letters, digits and hyphens, at most 50 characters


def project_name(output_dir: str) -> str:
    """A valid AutoTrain project name from the run directory's name: `runs/My run_2` -> `My-run-2`."""
    import re

    name = os.path.basename(os.path.normpath(os.path.expanduser(str(output_dir))))
    name = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:PROJECT_NAME_MAX].strip("-")
    return name or "trainer-run"


def data_columns(config: Config) -> tuple[str, str | None]:
    """How the data goes to AutoTrain: (text column, AutoTrain chat_template).

    Conversations go as a `messages` column when AutoTrain applies the same template trainer would (the
    tokenizer's own); otherwise trainer renders each with its template into a `text` column, so that both
    backends train on the same text.
    """
    if config.data.format != "text" and config.data.chat_template == "tokenizer":
        return "messages", "tokenizer"
    return "text", None


def export(config: Config, *, base_model: str | None = None, data_dir: str = "data", mixed_precision: str | None = None) -> dict:
    """Our config -> AutoTrain 0.8.36 LLM YAML data (`autotrain --config`), for the data layout of write_data:
    llm-sft, or llm-dpo / llm-orpo for training.objective dpo / orpo."""
    ours = config.to_dict()
    text_column, chat_template = data_columns(config)
    params: dict = {}
    out: dict = {
        "task": "llm-sft",
        "base_model": base_model or config.model.name_or_path,
        "project_name": project_name(config.output.dir),
        "backend": "local",
        "data": {
            "path": data_dir,
            "train_split": "train",
            "valid_split": None,  # see differences(): trainer measures the validation loss itself
            "chat_template": chat_template,
            "column_mapping": {"text_column": text_column},
        },
        "params": params,
        # AutoTrain 0.8.36 reads hub.username and hub.token unconditionally (KeyError without them). trainer pushes
        # the finished run itself, with HF_TOKEN from the environment, so no token is ever written here.
        "hub": {"username": None, "token": None, "push_to_hub": False},
    }
    for field in FIELDS:
        if field.ours is None or field.to_autotrain is None or config.training.objective not in field.objectives:
            continue
        value = get_path(ours, field.ours, MISSING)
        if value is MISSING or value is None:
            continue
        set_path(out, field.autotrain, field.to_autotrain(value))
    method = config.training.method
    params["peft"] = method != "full"
    params["quantization"] = "int4" if method == "qlora" else None
    if method == "full":
        for key in ("lora_r", "lora_alpha", "lora_dropout", "target_modules"):
            params.pop(key, None)
    params["epochs"] = whole_epochs(config)
    params["block_size"] = config.data.max_seq_length
    params["mixed_precision"] = mixed_precision
    params["padding"] = "right"
    if config.training.objective != "sft":
        export_preference(config, out)
    return out


def mapping_table() -> str:
    """The FIELDS table as Markdown, for docs/autotrain.md."""
    def shown(value: Any) -> str:
        return "" if value is None else f"`{value}`"

    rows = ["| AutoTrain key | trainer key | AutoTrain 0.8.36 default | notes |", "| --- | --- | --- | --- |"]
    for field in FIELDS:
        if field.ours is not None:
            rows.append(f"| `{field.autotrain}` | `{field.ours}` | {shown(field.default)} | {field.note} |")
    return "\n".join(rows) + "\n"
