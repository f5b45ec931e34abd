"""Our config -> AutoTrain Advanced 0.8.36's LLM YAML (`autotrain --config`): what the backend hands over and
`trainer export --to autotrain` prints. The keys one table maps both ways are in fields.py; what is particular to
llm-dpo and llm-orpo, in preference.py; where AutoTrain would train otherwise than the config asks, in differences.py.
"""
from __future__ import annotations

import os
import re

from trainer.backends.autotrain.differences import whole_epochs
from trainer.backends.autotrain.fields import FIELDS
from trainer.backends.autotrain.preference import export_preference
from trainer.config.model import Config
from trainer.methods import method_for
from trainer.patterns import MISSING, get_path, set_path

PROJECT_NAME_MAX = 50  # AutoTrain allows letters, digits and hyphens, at most 50 characters


def project_name(output_dir: str) -> str:
    """A valid AutoTrain project name from the run directory's name: `runs/My run_2` -> `My-run-2`."""
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
    method = method_for(config)
    params["peft"] = method.has_adapter
    params["quantization"] = "int4" if method.name == "qlora" else None  # AutoTrain's name for QLoRA's 4-bit base
    if not method.has_adapter:
        for key in ("lora_r", "lora_alpha", "lora_dropout", "target_modules"):
            params.pop(key, None)
    params["epochs"] = whole_epochs(config)
    params["block_size"] = config.data.max_seq_length
    params["mixed_precision"] = mixed_precision
    params["padding"] = "right"
    if config.training.objective != "sft":
        export_preference(config, out)
    return out
