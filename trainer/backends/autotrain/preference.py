"""AutoTrain's llm-dpo and llm-orpo, read as ours and written from ours (the table they share with llm-sft: fields.py).

What AutoTrain Advanced 0.8.36 trains for them (trainers/clm/train_clm_dpo.py, train_clm_orpo.py and utils.py,
on TRL 0.13):
- `task: llm-dpo` or `llm-orpo`, or `task: llm` with `params.trainer: dpo|orpo` (params.trainer wins, as in
  AutoTrain's parser);
- the data columns text_column (the chosen answer), rejected_text_column and prompt_text_column. With a
  data.chat_template, chosen and rejected are whole conversations: the prompt is chosen[:-1] and each answer
  its last message, each rendered on its own; without one, the three are text and trained as written;
- dpo: beta = params.dpo_beta, TRL's sigmoid loss, no SFT term. With peft the reference is the model with the
  adapter off (params.model_ref is ignored); without, model_ref or a frozen copy of the model;
- orpo: TRL's ORPOConfig defaults, so lambda (TRL's `beta`) is 0.1 whatever params.dpo_beta says;
- both: TRL switches every dropout off, LoRA's included, and appends the end-of-text token to every answer. DPO
  cuts every prompt to its last params.max_prompt_length tokens (128 unless set), ORPO those of pairs longer
  than params.block_size.
"""
from __future__ import annotations

from typing import Any

from trainer.backends.autotrain.differences import ORPO_LAMBDA
from trainer.config.model import Config
from trainer.patterns import set_path

PREFERENCE_TASKS = {"llm-dpo": "dpo", "llm-orpo": "orpo"}
MAX_PROMPT_LENGTH = 128  # AutoTrain 0.8.36's default params.max_prompt_length
PAIR_COLUMNS = {"text_column": "chosen", "rejected_text_column": "rejected", "prompt_text_column": "prompt"}


def section(data: dict, key: str) -> dict:
    """data[key] when it is a mapping, else an empty one (AutoTrain files may leave a section out)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def translate_preference(source: dict, ours: dict, origin: dict[str, str], objective: str) -> list[str]:
    """The dpo/orpo part of an AutoTrain file -> ours (objective, data layout, columns); the notices it needs."""
    params, data = section(source, "params"), section(source, "data")
    set_path(ours, "training.objective", objective)
    set_path(ours, "data.format", "preference")
    origin["training.objective"] = origin["data.format"] = "task"
    mapping = section(data, "column_mapping")
    for theirs, key in PAIR_COLUMNS.items():
        column = mapping.get(theirs)
        if isinstance(column, str) and column and column != key:
            set_path(ours, f"data.columns.{key}", column)
            origin[f"data.columns.{key}"] = f"data.column_mapping.{theirs}"
    notices = []
    if data.get("chat_template") in (None, "none"):
        ours.get("data", {}).pop("chat_template", None)
        notices.append(f"AutoTrain's llm-{objective} without data.chat_template trains on the prompt and answer text exactly as "
                       "written; trainer reads a text prompt as the user's message and a text answer as the assistant's, and "
                       "renders them with data.chat_template (the tokenizer's own template unless set).")
    if objective == "orpo":
        set_path(ours, "training.orpo.weight", ORPO_LAMBDA)
        origin["training.orpo.weight"] = "task"
        if "dpo_beta" in params:
            notices.append(f"AutoTrain's params.dpo_beta is not used by llm-orpo: AutoTrain 0.8.36 does not pass it to ORPO, "
                           f"which trains with lambda {ORPO_LAMBDA} (training.orpo.weight).")
    dropout = params.get("lora_dropout", 0.05)
    if params.get("peft", False) and dropout:  # TRL's disable_dropout: the LoRA dropout AutoTrain passes is set to 0
        set_path(ours, "training.lora.dropout", 0.0)
        notices.append(f"AutoTrain's llm-{objective} trains with every dropout off (TRL's default), so params.lora_dropout "
                       f"{dropout} becomes training.lora.dropout: 0, the dropout it trains with.")
    notices += _model_ref(params, objective)
    length = params.get("max_prompt_length", MAX_PROMPT_LENGTH)
    which = "every prompt" if objective == "dpo" else "the prompt of a pair longer than params.block_size"
    notices.append(f"AutoTrain's llm-{objective} cuts {which} to its last {length} tokens (params.max_prompt_length); "
                   "trainer keeps whole prompts and cuts a pair only at data.max_seq_length, from its end.")
    return notices


def _model_ref(params: dict, objective: str) -> list[str]:
    """params.model_ref: another reference model, which trainer has no place for."""
    if not params.get("model_ref"):
        return []
    if objective == "dpo" and not params.get("peft", False):
        raise ValueError("params.model_ref: trainer's dpo compares with the model it starts from (model.name_or_path) and "
                         "cannot use another reference model; remove params.model_ref, or train a copy of that model.")
    why = "llm-orpo has no reference model" if objective == "orpo" else "with peft, AutoTrain ignores it too (the reference is the model with the adapter off)"
    return [f"AutoTrain's params.model_ref is not used: {why}."]


def export_preference(config: Config, out: dict) -> None:
    """The dpo/orpo part of the AutoTrain YAML: its task, and the pairs as prompt/chosen/rejected text that trainer
    rendered (pairs.py), so AutoTrain applies no template of its own."""
    params: dict[str, Any] = out["params"]
    out["task"] = f"llm-{config.training.objective}"
    out["data"]["chat_template"] = None
    out["data"]["column_mapping"] = dict(PAIR_COLUMNS)
    length = config.data.max_seq_length
    # DPO cuts every prompt to its last max_prompt_length tokens, then prompt + answer to max_length (= block_size)
    # at the end: with the whole length for the prompt, that is trainer's cut. ORPO, for a pair longer than
    # max_length, also cuts each answer to max_length - max_prompt_length tokens: half (the whole would leave none).
    params["max_prompt_length"] = length if config.training.objective == "dpo" else max(1, length // 2)
    params["max_completion_length"] = None
