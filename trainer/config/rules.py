"""Cross-field rules: small named functions, each returning (path, message) pairs.

Messages read "A requires B; set C". `CONFIG_RULES` depend only on the config
(and the files it names); `HARDWARE_RULES` depend on the machine, so they are
errors when a run starts and warnings in `trainer validate`.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

from trainer.config.model import Config
from trainer.config.schema import apply_defaults, subschema
from trainer.hardware import Hardware, has_package
from trainer.patterns import DATA_SUFFIXES, is_local_data, is_local_model  # noqa: F401 (DATA_SUFFIXES: trainer.data.records)

Found = Iterator[tuple[tuple, str]]


# ---- training length and evaluation -----------------------------------------------------------


def epochs_xor_max_steps(cfg: Config) -> Found:
    t = cfg.training
    if t.epochs is None and t.max_steps is None:
        yield ("training",), "the length of training is not set; set training.epochs (e.g. 3) or training.max_steps (e.g. 500)."
    elif t.epochs is not None and t.max_steps is not None:
        yield ("training", "max_steps"), "training.epochs and training.max_steps both set the length of training; set only one of them."


def early_stopping_needs_validation(cfg: Config) -> Found:
    if cfg.training.early_stopping is not None and cfg.data.validation is None and cfg.data.validation_split == 0:
        yield ("training", "early_stopping"), (
            "early stopping requires a validation set; set data.validation to a file, or data.validation_split above 0 (e.g. 0.1)."
        )


# ---- data -------------------------------------------------------------------------------------


def chat_template_is_named_or_jinja(cfg: Config) -> Found:
    named = (subschema(("data", "chat_template")) or {})["x-named"]
    template = cfg.data.chat_template
    if template not in named and "{{" not in template and "{%" not in template:
        import difflib
        import re

        close = difflib.get_close_matches(template, named, n=1)
        # a plain name may be one of the model's named templates ("tool_use"): the tokenizer says so when the data is prepared
        if close or not re.fullmatch(r"[\w.-]+", template):
            hint = f" Did you mean `{close[0]}`?" if close else ""
            yield ("data", "chat_template"), (f"{template!r} is neither a built-in template ({', '.join(named)}), the name of one of "
                                              f"the model's templates, nor a Jinja template.{hint}")


def text_format_has_no_assistant(cfg: Config) -> Found:
    if cfg.data.format == "text" and cfg.data.train_on == "assistant":
        yield ("data", "train_on"), "plain text has no assistant turns to learn from, so train_on: assistant requires a chat format; set data.train_on: all."


# apply_chat_template's own arguments, the names every render passes (transformers adds the special tokens: bos_token,
# eos_token, ...) and strftime_now (data.template_date pins it): a template variable of one of these names would
# replace what trainer passes, or be refused by transformers
RENDER_NAMES = ("messages", "tools", "documents", "add_generation_prompt", "continue_final_message", "chat_template", "tokenize",
                "padding", "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
                "tokenizer_kwargs", "sanitize_control_tokens", "strftime_now", "bos_token", "eos_token", "unk_token", "pad_token",
                "sep_token", "cls_token", "mask_token", "additional_special_tokens")


def template_kwargs_are_free(cfg: Config) -> Found:
    for name in cfg.data.template_kwargs:
        if name == "strftime_now":
            yield ("data", "template_kwargs", name), "strftime_now is the template's clock; set the date it shows with data.template_date."
        elif name in RENDER_NAMES:
            yield ("data", "template_kwargs", name), (f"{name!r} is what trainer itself passes to every render (the conversation, its "
                                                      "tools, the tokenizer's special tokens); remove it from data.template_kwargs.")


def template_date_is_a_date(cfg: Config) -> Found:
    import datetime

    try:
        datetime.date.fromisoformat(cfg.data.template_date)
    except ValueError:
        yield ("data", "template_date"), f"{cfg.data.template_date!r} is not a date of the calendar; write it as YYYY-MM-DD, e.g. 2025-08-05."


# ---- objectives (sft, dpo, orpo, grpo) ----------------------------------------------------------

PREFERENCE = ("dpo", "orpo")


def preference_learns_answers_only(cfg: Config) -> Found:
    if cfg.training.objective in PREFERENCE and cfg.data.train_on == "all":
        yield ("data", "train_on"), (f"{cfg.training.objective} compares the two answers of each pair, so only answer tokens can count; "
                                     "set data.train_on: assistant.")


def objective_matches_data_format(cfg: Config) -> Found:
    objective, fmt = cfg.training.objective, cfg.data.format
    if objective in PREFERENCE and fmt not in ("auto", "preference"):
        yield ("data", "format"), (f"{objective} learns from preference pairs, and data.format is {fmt}; "
                                   "set data.format: preference (or auto), or training.objective: sft.")
    if objective == "grpo" and fmt not in ("auto", "messages"):
        yield ("data", "format"), (f"grpo reads prompts (messages ending with the user's turn, or a prompt column), and data.format is {fmt}; "
                                   "set data.format: auto.")
    if objective == "sft" and fmt == "preference":
        yield ("training", "objective"), "preference pairs are learnt with a preference objective; set training.objective: dpo (or orpo)."


def preference_without_packing(cfg: Config) -> Found:
    if cfg.training.objective in PREFERENCE and cfg.data.packing:
        yield ("data", "packing"), (f"{cfg.training.objective} puts both answers of a pair in one batch, which packing would split; "
                                    "set data.packing: false.")


def preference_strategies(cfg: Config) -> Found:
    if cfg.training.objective in PREFERENCE and cfg.distributed.strategy in ("fsdp", "deepspeed"):
        yield ("distributed", "strategy"), (f"{cfg.training.objective} runs in one process or with ddp for now; "
                                            "set distributed.strategy: ddp (or none).")


def grpo_settings_need_grpo(cfg: Config) -> Found:
    # compared with the defaults, not looked up in the YAML: the UI and `trainer init` write every section out
    if cfg.training.objective == "grpo":
        return
    defaults = apply_defaults(subschema(("training", "grpo")) or {}, {})
    for key, value in cfg.training.grpo.to_dict().items():
        if value != defaults[key]:
            yield ("training", "grpo", key), (f"only the grpo objective reads this, and training.objective is {cfg.training.objective}; "
                                              "set training.objective: grpo, or remove it.")


def grpo_without_packing(cfg: Config) -> Found:
    if cfg.training.objective == "grpo" and cfg.data.packing:
        yield ("data", "packing"), ("grpo samples its own answers to one prompt per row, so there are no examples to pack; "
                                    "set data.packing: false.")


def grpo_needs_graders(cfg: Config) -> Found:
    if cfg.training.objective == "grpo" and not cfg.training.grpo.graders:
        yield ("training", "grpo", "graders"), (
            "grpo learns from the scores graders give its answers, and none is set; add one, e.g. "
            "- {type: string_check, name: correct, operation: eq, input: '{{ sample.output_text }}', reference: '{{ item.answer }}'} "
            "(docs/graders.md), or set training.objective: sft.")


def grader_lists(cfg: Config) -> list[tuple[tuple[str, ...], tuple[str | dict, ...]]]:
    """(key path, entries) of each list of graders the config runs: grpo's rewards, and evaluation.graders."""
    lists: list[tuple[tuple[str, ...], tuple[str | dict, ...]]] = [(("evaluation", "graders"), cfg.evaluation.graders)]
    if cfg.training.objective == "grpo":
        lists.insert(0, (("training", "grpo", "graders"), cfg.training.grpo.graders))
    return lists


def graders_are_valid(cfg: Config) -> Found:
    # each problem at its key below the list; a grader file that is not there is local_files_exist's
    if not any(entries for _, entries in grader_lists(cfg)):
        return
    from trainer.reinforcement.rewards import read_rewards  # imported here: graders are read only when there are some

    for where, entries in grader_lists(cfg):
        for path, message in read_rewards(entries, files=False)[1]:
            yield (*where, *path), message


def evaluation_graders_have_own_names(cfg: Config) -> Found:
    # a grader's name is its metric in eval.json: one named like a metric would overwrite that metric's numbers
    if not cfg.evaluation.graders:
        return
    from trainer.evaluation.metrics import RESERVED
    from trainer.reinforcement.rewards import read_rewards

    for reward in read_rewards(cfg.evaluation.graders, files=False)[0]:
        if reward.name in RESERVED:
            yield ("evaluation", "graders", reward.index), (f"the grader {reward.name!r} is named like one of trainer eval's own numbers, "
                                                            "which it would overwrite in the report; give it another `name`.")


def grpo_reference_is_the_adapter_off(cfg: Config) -> Found:
    if cfg.training.objective == "grpo" and cfg.training.grpo.beta > 0 and (cfg.model.adapter is not None or cfg.training.method == "full"):
        yield ("training", "grpo", "beta"), ("grpo's KL term compares with the model with its adapter switched off, which is the model "
                                             "the run starts from only for a new adapter (not with model.adapter or method full); "
                                             "set training.grpo.beta: 0.")


def why_vllm_cannot_sample(cfg: Config) -> str | None:
    """Why vLLM cannot sample grpo's answers for this config (trainer/reinforcement/vllm_sampling.py), or None."""
    from trainer.models import is_gguf

    if cfg.training.method == "full":
        return "it trains every weight, and vLLM gets the policy as a LoRA adapter file"
    if cfg.training.method == "dora":
        return "vLLM does not apply DoRA adapters"
    if is_gguf(cfg.model.name_or_path):
        return "vLLM puts no LoRA adapter on a model read from a GGUF file; name the original model (a Hugging Face id or folder)"
    if not 0.01 <= cfg.training.grpo.temperature <= 2:  # vLLM raises a lower one to 0.01 and refuses a higher one than 2
        return (f"vLLM samples at temperatures from 0.01 to 2, and training.grpo.temperature is {cfg.training.grpo.temperature:g} "
                "(the loss would score another distribution than the one sampled)")
    return None


def grpo_vllm_samples_for_lora_runs(cfg: Config) -> Found:
    if cfg.training.objective == "grpo" and cfg.training.grpo.generation == "vllm" and (why := why_vllm_cannot_sample(cfg)):
        yield ("training", "grpo", "generation"), (f"vLLM samples grpo's answers for lora and qlora runs on a base it can load, and {why}; "
                                                   "set training.grpo.generation: transformers (or auto, which chooses it here).")


def grpo_runs_in_one_process(cfg: Config) -> Found:
    if cfg.training.objective == "grpo" and cfg.distributed.strategy != "none":
        yield ("distributed", "strategy"), ("grpo samples and trains in one process for now (its batches are graded as a "
                                            "whole); set distributed.strategy: none.")


def adapter_fits_method(cfg: Config) -> Found:
    if cfg.model.adapter is not None and cfg.training.method == "full":
        yield ("model", "adapter"), "an adapter is trained further with an adapter method; set training.method: lora (or dora, qlora), or remove model.adapter."


def local_files_exist(cfg: Config) -> Found:
    refs = [(("data", "train"), cfg.data.train), (("data", "validation"), cfg.data.validation), (("evaluation", "test"), cfg.evaluation.test)]
    for path, ref in refs:
        if ref is not None and is_local_data(ref) and not os.path.exists(os.path.expanduser(ref)):
            yield path, (
                f"no file or folder {ref!r} (relative paths start from {os.getcwd()}). "
                "Give a .jsonl, .json, .csv or .parquet file, a folder of them, or a Hub data set id such as org/name."
            )
    model = cfg.model.name_or_path
    if is_local_model(model) and not os.path.exists(os.path.expanduser(model)):
        fix = " Run `trainer download-demo-model` (or `make demo`) to fetch it." if "SmolLM2-135M-Instruct" in model else ""
        yield ("model", "name_or_path"), f"no model file or folder {model!r}.{fix}"
    for where, entries in grader_lists(cfg):
        for index, entry in enumerate(entries):
            grader_file = entry if isinstance(entry, str) else entry.get("file")
            if isinstance(grader_file, str) and not os.path.exists(os.path.expanduser(grader_file)):
                yield (*where, index), f"no grader file {grader_file!r} (relative paths start from {os.getcwd()})."
    adapter = cfg.model.adapter
    if adapter is not None and not os.path.exists(os.path.expanduser(adapter)):
        yield ("model", "adapter"), (f"no adapter folder or run directory {adapter!r} (relative paths start from {os.getcwd()}). "
                                     "Train that run first (runs/quickstart comes from `make demo`), or give the folder of another adapter.")


# ---- output -----------------------------------------------------------------------------------


def push_to_hub_needs_token(cfg: Config) -> Found:
    if cfg.output.push_to_hub is not None and not os.environ.get("HF_TOKEN"):
        yield ("output", "push_to_hub"), (
            "uploading to the Hub requires a token; set the HF_TOKEN environment variable "
            "(it is never written to any file), or remove output.push_to_hub."
        )


def score_model_has_endpoint(cfg: Config) -> Found:
    if not any(entries for _, entries in grader_lists(cfg)):
        return
    from trainer.reinforcement.rewards import endpoint_problems, read_rewards

    for where, entries in grader_lists(cfg):
        for reward, why in endpoint_problems(read_rewards(entries, files=False)[0]):
            yield (*where, reward.index), f"the grader {reward.name!r}: {why}"


def tensorboard_needs_package(cfg: Config) -> Found:
    if cfg.logging.report_to == "tensorboard" and not has_package("tensorboard"):
        yield ("logging", "report_to"), "tensorboard logging requires the tensorboard package; install it with `pip install 'trainer[tensorboard]'`, or set logging.report_to: none."


def output_dir_is_a_folder(cfg: Config) -> Found:
    if os.path.isfile(os.path.expanduser(cfg.output.dir)):
        yield ("output", "dir"), f"{cfg.output.dir!r} is a file; the run directory must be a folder. Choose another output.dir."


def distributed_fits_method(cfg: Config) -> Found:
    strategy = cfg.distributed.strategy
    if strategy == "none":
        if cfg.distributed.num_processes not in (None, 1):
            yield ("distributed", "num_processes"), "several processes need a strategy; set distributed.strategy: ddp (or fsdp, deepspeed)."
        return
    if cfg.training.method == "qlora" and strategy == "fsdp":
        yield ("distributed", "strategy"), "qlora's 4-bit weights cannot be sharded by fsdp here; use distributed.strategy: ddp."
    if cfg.training.method == "qlora" and strategy == "deepspeed":
        # the engine casts the whole model to its bf16/fp16, bitsandbytes' 4-bit weights with it
        yield ("distributed", "strategy"), "qlora's 4-bit weights do not survive DeepSpeed's cast to bf16; use distributed.strategy: ddp."
    if cfg.training.optimizer == "adamw_8bit" and strategy == "deepspeed":
        yield ("training", "optimizer"), ("ZeRO shards the optimizer state itself, which bitsandbytes' 8-bit AdamW keeps "
                                          "its own way; set training.optimizer: adamw.")


def several_nodes_need_a_strategy(cfg: Config) -> Found:
    from trainer.distributed import node_range, several_nodes  # imported here: trainer.distributed imports trainer.config

    d = cfg.distributed
    low, high = node_range(d)
    if low > high:
        yield ("distributed", "nodes"), (f"{d.nodes!r} asks for at least {low} and at most {high} machines; write min:max with "
                                         f"min <= max, e.g. {high}:{low}.")
        return
    if not several_nodes(d):
        if d.rendezvous is not None:
            yield ("distributed", "rendezvous"), ("a rendezvous is where several machines meet, and distributed.nodes is one; "
                                                  "set distributed.nodes (e.g. 2), or remove distributed.rendezvous.")
        if d.max_restarts:
            yield ("distributed", "max_restarts"), ("restarts after a failed node need a run on several machines, and "
                                                    "distributed.nodes is one; set distributed.nodes (e.g. 2), or set "
                                                    "distributed.max_restarts: 0.")
        return
    if d.strategy == "none":
        yield ("distributed", "nodes"), ("several machines train together only with a distributed strategy; set "
                                         "distributed.strategy: ddp (or fsdp, deepspeed), or remove distributed.nodes.")
    if d.strategy == "deepspeed" and low != high:
        # a ZeRO checkpoint holds one shard per process, and an elastic run may restart with fewer of them
        yield ("distributed", "nodes"), (f"deepspeed resumes only with the number of processes that saved, and nodes {d.nodes!r} "
                                         f"lets an elastic run restart with fewer; set distributed.nodes: {high} (or use "
                                         "distributed.strategy: fsdp, whose checkpoints hold whole weights).")
    if d.rendezvous is not None:
        port = d.rendezvous.rpartition(":")[2] if not d.rendezvous.endswith("]") and ":" in d.rendezvous else None
        if port is not None and not 0 < int(port) < 65536:
            yield ("distributed", "rendezvous"), f"port {port} of {d.rendezvous!r} is not a port (1 to 65535); e.g. {d.rendezvous.rpartition(':')[0]}:29500."


# ---- the backend -----------------------------------------------------------------------------


def backend_refusals(cfg: Config) -> Found:
    """What the chosen backend cannot run at all (trainer/backends: `Backend.refusals`)."""
    from trainer.backends import get_backend  # imported here: trainer.backends imports trainer.config

    yield from get_backend(cfg.backend.name).refusals(cfg)


# Problems are shown sorted by line, and two at the same key in this order: the adapter's and the backend's come
# first, as they did when the backend's refusals were rules here.
CONFIG_RULES: list[Callable[[Config], Found]] = [
    adapter_fits_method,
    backend_refusals,
    distributed_fits_method,
    several_nodes_need_a_strategy,
    epochs_xor_max_steps,
    early_stopping_needs_validation,
    chat_template_is_named_or_jinja,
    text_format_has_no_assistant,
    template_kwargs_are_free,
    template_date_is_a_date,
    preference_learns_answers_only,
    objective_matches_data_format,
    preference_without_packing,
    preference_strategies,
    grpo_settings_need_grpo,
    grpo_without_packing,
    grpo_needs_graders,
    graders_are_valid,
    evaluation_graders_have_own_names,
    grpo_runs_in_one_process,
    grpo_vllm_samples_for_lora_runs,
    grpo_reference_is_the_adapter_off,
    local_files_exist,
    push_to_hub_needs_token,
    score_model_has_endpoint,
    tensorboard_needs_package,
    output_dir_is_a_folder,
]

# What only the machine that runs a config can decide: the files it names are there, HF_TOKEN is set. A config
# written for another machine (`trainer convert`) is warned about them instead (check_local).
LOCAL_RULES: list[Callable[[Config], Found]] = [local_files_exist, push_to_hub_needs_token, score_model_has_endpoint]


# ---- the machine ------------------------------------------------------------------------------


def qlora_needs_cuda_and_bitsandbytes(cfg: Config, hw: Hardware) -> Found:
    if cfg.training.method != "qlora":
        return
    device = hw.device(cfg.backend.peft.device)
    if device != "cuda":
        yield ("training", "method"), f"qlora requires an NVIDIA GPU (CUDA), and this run would use {device}; set training.method: lora."
    elif not has_package("bitsandbytes"):
        yield ("training", "method"), "qlora requires the bitsandbytes package; install it with `pip install 'trainer[gpu]'`, or set training.method: lora."


def adamw_8bit_needs_cuda_and_bitsandbytes(cfg: Config, hw: Hardware) -> Found:
    if cfg.training.optimizer != "adamw_8bit":
        return
    if hw.device(cfg.backend.peft.device) != "cuda" or not has_package("bitsandbytes"):
        yield ("training", "optimizer"), "adamw_8bit requires an NVIDIA GPU and the bitsandbytes package; set training.optimizer: adamw."


def precision_fits_hardware(cfg: Config, hw: Hardware) -> Found:
    device = hw.device(cfg.backend.peft.device)
    precision = cfg.training.precision
    if precision == "fp16" and device not in ("cuda", "mps"):
        yield ("training", "precision"), f"fp16 requires a GPU, and this run would use {device}; set training.precision: auto (or bf16)."
    if precision == "bf16" and device == "cuda" and not hw.cuda_bf16:
        yield ("training", "precision"), "this GPU cannot compute in bf16; set training.precision: fp16 (or auto)."
    if cfg.model.dtype == "float16" and device == "cpu":
        yield ("model", "dtype"), "float16 weights cannot be trained on a CPU; set model.dtype: auto (or float32)."


def device_exists(cfg: Config, hw: Hardware) -> Found:
    wanted = cfg.backend.peft.device
    if (wanted == "cuda" and not hw.cuda) or (wanted == "mps" and not hw.mps):
        yield ("backend", "peft", "device"), f"device {wanted} is not available on this machine; set backend.peft.device: auto."


def flash_attention_needs_package(cfg: Config, hw: Hardware) -> Found:
    if cfg.model.attn_implementation == "flash_attention_2":
        if hw.device(cfg.backend.peft.device) != "cuda" or not has_package("flash_attn"):
            yield ("model", "attn_implementation"), "flash_attention_2 requires an NVIDIA GPU and the flash-attn package; set model.attn_implementation: auto."


def deepspeed_needs_package(cfg: Config, hw: Hardware) -> Found:
    if cfg.distributed.strategy == "deepspeed" and not has_package("deepspeed"):
        yield ("distributed", "strategy"), ("deepspeed requires the deepspeed package; install it with "
                                            "`pip install 'trainer[deepspeed]'`, or set distributed.strategy: fsdp "
                                            "(it shards the same state as ZeRO-3).")


HARDWARE_RULES: list[Callable[[Config, Hardware], Found]] = [
    deepspeed_needs_package,
    qlora_needs_cuda_and_bitsandbytes,
    adamw_8bit_needs_cuda_and_bitsandbytes,
    precision_fits_hardware,
    device_exists,
    flash_attention_needs_package,
]


def check_config(cfg: Config, check_files: bool = True, here: bool = True) -> list[tuple[tuple, str]]:
    """`here=False` leaves out LOCAL_RULES; `check_files=False`, local_files_exist."""
    chosen = [r for r in CONFIG_RULES if (check_files or r is not local_files_exist) and (here or r not in LOCAL_RULES)]
    return [found for rule in chosen for found in rule(cfg)]


def check_local(cfg: Config) -> list[tuple[tuple, str]]:
    return [found for rule in LOCAL_RULES for found in rule(cfg)]


def check_hardware(cfg: Config, hw: Hardware) -> list[tuple[tuple, str]]:
    return [found for rule in HARDWARE_RULES for found in rule(cfg, hw)]

