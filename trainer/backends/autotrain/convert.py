"""AutoTrain Advanced's LLM YAML read as ours: `trainer convert --from autotrain`, or an AutoTrain file given to
`trainer --config` or `trainer validate`.

The keys that map one to one are the table in fields.py (shared with params.py, which writes AutoTrain's YAML
from ours); what is particular to llm-dpo and llm-orpo is in preference.py. Defaults are AutoTrain 0.8.36's own,
so a translated file trains what AutoTrain would have trained.
"""
from __future__ import annotations

import os

from trainer.backends.autotrain.fields import FIELDS
from trainer.backends.autotrain.preference import PREFERENCE_TASKS, section, translate_preference
from trainer.config.yaml_loader import Document
from trainer.patterns import MISSING, get_path, set_path

SFT_TASKS = {"llm", "llm-sft", "llm-generic", "lm_training", "llm_training", "llm_finetuning"}
OTHER_LLM_TASKS = {"llm-reward": "reward modelling", "llm-grpo": "GRPO"}
TRAINERS = {"sft": "sft", "default": "sft", "generic": "sft", "dpo": "dpo", "orpo": "orpo"}  # params.trainer -> objective

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
    notices += _unused_keys(source, objective).values()
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


def _unused_keys(source: dict, objective: str) -> dict[str, str]:
    """Each AutoTrain key trainer does not use, with a notice that says why."""
    known = {f.autotrain for f in FIELDS}
    notices = {}
    for key in _leaves(source):
        if key in IGNORED:
            notices[key] = f"AutoTrain's {key} is not used: {IGNORED[key]}."
        elif key in PREFERENCE_ONLY and objective == "sft":
            notices[key] = f"AutoTrain's {key} is not used: it belongs to llm-dpo and llm-orpo, and this file trains llm-sft."
        elif key not in known and not key.startswith(("data.column_mapping.", "hub.")):
            notices[key] = f"AutoTrain's {key} has no trainer equivalent and is not used."
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


REPO_ID = ("output", "push_to_hub", "repo_id")


def translate_document(doc: Document) -> tuple[Document, list[str]]:
    """Translate an AutoTrain document, keeping each value's line by way of the key it came from, and each ${VAR}
    as a reference where the value is carried over. A ${VAR} that is not set is a problem only where trainer uses the
    value: AutoTrain's examples name ${HF_TOKEN} (trainer reads HF_TOKEN itself) and ${HF_USERNAME} (used only to
    push)."""
    from trainer.errors import UserError

    try:
        data, notices, origin = translate(doc.data)
    except ValueError as exc:
        raise UserError([doc.problem(("task",), str(exc))]) from None
    unused = _unused_env_keys(doc.data)
    ignored = [p for path, problems in doc.unset_env.items() if path in unused for p in problems]
    out = Document(data=data, file=doc.file, problems=[p for p in doc.problems if not any(p is q for q in ignored)])
    out.marks[()] = doc.marks.get((), (1, 1))
    for ours, theirs in origin.items():
        theirs_path = tuple(theirs.split("."))
        mark = doc.mark(theirs_path)
        out.aliases[tuple(ours.split("."))] = theirs
        for i in range(1, len(ours.split(".")) + 1):
            out.marks.setdefault(tuple(ours.split(".")[:i]), mark)  # type: ignore[arg-type]  # None: no line known
        if theirs_path in doc.env_refs:
            out.env_refs[tuple(ours.split("."))] = doc.env_refs[theirs_path]
        if theirs_path in doc.unset_env:
            out.unset_env[tuple(ours.split("."))] = doc.unset_env[theirs_path]
    username = ("hub", "username")
    if get_path(data, REPO_ID) is not None and username in doc.env_refs:  # as _translate_hub names it
        out.env_refs[REPO_ID] = f"{doc.env_refs[username]}/{doc.data.get('project_name', 'model')}"
        if username in doc.unset_env:
            out.unset_env[REPO_ID] = doc.unset_env[username]
    return out, notices


def _unused_env_keys(source: dict) -> set[tuple]:
    """The keys of an AutoTrain file whose values trainer does not use: their ${VAR}s need not be set."""
    keys = set(_unused_keys(source, objective_of(source))) | {"hub.token"}
    if not section(source, "hub").get("push_to_hub"):
        keys.add("hub.username")
    return {tuple(key.split(".")) for key in keys}
