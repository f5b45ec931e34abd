"""What AutoTrain is handed: the data trainer's pipeline accepted, in AutoTrain's local layout (preference pairs:
pairs.py), the model as a folder transformers 4.48 reads, and autotrain.yml (params.py)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from trainer.backends.autotrain.environment import VERSION
from trainer.backends.autotrain.pairs import write_pairs
from trainer.backends.autotrain.params import data_columns, export
from trainer.config import Config
from trainer.errors import UserError


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_data(config: Config, tokenizer: Any, data: Any, folder: Path) -> None:
    """train.jsonl (and validation.jsonl) in AutoTrain's local layout, with the examples trainer's pipeline accepted,
    in the column data_columns() names: the conversations, or the text trainer's template renders from them.
    Preference pairs go as prompt/chosen/rejected text (pairs.py)."""
    from trainer.data.templates import template_of
    from trainer.data.tokenize import Tokenizer
    from trainer.objectives import objective_for

    folder.mkdir(parents=True, exist_ok=True)
    if objective_for(config).pairs:
        assert data.encoder is not None  # prepare_data keeps what tokenized the pairs: the hand-over renders them alike
        for note in write_pairs(data.encoder, (list(data.examples(0)), list(data.examples(1))), config.training.objective, folder):
            _say(f"warning: {note}")
        return
    column, _ = data_columns(config)
    encoder = None
    if column == "text" and config.data.format != "text":
        encoder = Tokenizer(tokenizer, template_of(config.data, tokenizer), "all", config.data.max_seq_length,
                            fold_system=config.data.system_prompt == "fold", tool_call_ids=config.data.tool_call_ids)
    for name, examples in (("train", data.examples(0)), ("validation", data.examples(1))):
        rows = []
        for example in examples:
            if example.text is not None:
                rows.append({"text": example.text})
                continue
            if encoder is not None:  # tool calls, results and reasoning rendered as trainer renders them
                rows.append({"text": encoder.render(encoder.template_messages(example.messages), False, example.tools)})
                continue
            if example.tools or any(m.tool_calls or m.reasoning or m.role == "tool" for m in example.messages):
                raise UserError(f"{example.file}:{example.line}: AutoTrain applies the tokenizer's template without tools, tool calls "
                                "or reasoning; set data.chat_template to a named template (e.g. hermes) so trainer renders the "
                                "conversations for it, or use backend.name: peft.")
            rows.append({"messages": [{"role": m.role, "content": m.content} for m in example.messages]})
        if rows:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def materialise_model(config: Config, tokenizer: Any, folder: Path) -> str:
    """What AutoTrain's `base_model` should be: a Hub id as it is; a local folder or .gguf file as a folder that
    transformers 4.48 reads exactly as trainer does (weights linked, config and tokenizer files rewritten)."""
    from trainer.models import dequantised_gguf, is_gguf

    name = config.model.name_or_path
    path = Path(name).expanduser()
    if is_gguf(name):
        source = dequantised_gguf(path)
    elif path.is_dir():
        source = path
    else:
        return name  # a Hub id: AutoTrain downloads it itself
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.suffix == ".safetensors" or item.name in ("model.safetensors.index.json", "generation_config.json") or item.suffix == ".bin":
            (folder / item.name).symlink_to(item.resolve())
    model_config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(legacy_model_config(model_config), indent=2))
    save_legacy_tokenizer(tokenizer, folder)
    return str(folder.resolve())


def legacy_model_config(data: dict) -> dict:
    """A transformers-5 config.json as transformers 4.48 expects it: 4.48 reads rope_theta and rope_scaling at the
    top level and ignores rope_parameters, so without this it would silently use the default rope_theta (a
    different model)."""
    data = dict(data)
    rope = data.get("rope_parameters")
    if isinstance(rope, dict) and "layer_types" not in rope:
        data.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            data.setdefault("rope_scaling", {**scaling, "type": scaling.get("rope_type")})
        else:
            data.setdefault("rope_scaling", None)
    if "dtype" in data:
        data.setdefault("torch_dtype", data["dtype"])
    return data


def save_legacy_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Save the tokenizer so that transformers 4.48 loads it: transformers 5 names a `TokenizersBackend` class that
    4.48 does not have, and keeps the chat template in a separate file 4.48 does not read."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("backend", "is_local", "local_files_only"):
        data.pop(key, None)
    template = tokenizer.chat_template
    if isinstance(template, str) and template:
        data["chat_template"] = template
    extra = data.pop("extra_special_tokens", None)
    if isinstance(extra, list) and extra:
        data.setdefault("additional_special_tokens", extra)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def mixed_precision_for(config: Config) -> str | None:
    """AutoTrain's params.mixed_precision for training.precision on this machine (auto: bf16 where native)."""
    from trainer.hardware import Hardware
    from trainer.models import mixed_precision

    value = mixed_precision(config, Hardware.detect().device("auto"))
    return None if value == "no" else value


def prepare_handover(config: Config, work: Path) -> tuple[dict, Any, Any]:
    """Write data, model and autotrain.yml into `work`; return (AutoTrain YAML data, tokenizer, prepared data)."""
    import yaml

    from trainer.data.pipeline import prepare_data
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer)
    write_data(config, tokenizer, data, work / "data")
    base = materialise_model(config, tokenizer, work / "base-model")
    document = export(config, base_model=base, data_dir="data", mixed_precision=mixed_precision_for(config))
    (work / "autotrain.yml").write_text(
        f"# Written by trainer for AutoTrain Advanced {VERSION}. Run it from this folder: autotrain --config autotrain.yml\n"
        + yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return document, tokenizer, data
