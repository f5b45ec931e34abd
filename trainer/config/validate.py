"""From a YAML file to a frozen config, or to every problem with it at once.

The steps: read the YAML strictly (yaml_loader), translate an AutoTrain file if
that is what we were given, apply `--set` overrides, read numbers written as
text, check against the schema, fill defaults, apply the cross-field rules.
Problems from every step are collected and raised together as one UserError.
"""
from __future__ import annotations

import datetime
import difflib
import math
from typing import Any, Iterable

import jsonschema

from trainer.config import rules
from trainer.config.model import Config, build_config
from trainer.config.schema import apply_defaults, coerce_numbers, json_type, load_schema, subschema, types_of
from trainer.config.yaml_loader import Document, dotted, read_text_file, read_yaml
from trainer.console import note, warn
from trainer.errors import Problem, UserError
from trainer.patterns import get_path

_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a section (indented key: value lines)",
    "array": "a list",
    "null": "empty",
}


def load_config(filename: str, overrides: Iterable[str] = (), check_files: bool = True, elsewhere: bool = False) -> Config:
    """Read, check and normalise the config file `filename`. Raises UserError listing every problem.

    `check_files=False` skips the checks that the files it names exist (for a finished run's config.yaml).
    `elsewhere=True` reads it to be written out for whichever machine will run it (`trainer convert`): a ${VAR} that
    is not set here stays a reference, and what only that machine decides (the files it names are there, HF_TOKEN is
    set) is a warning here, checked again where it runs.
    """
    return parse_config(read_text_file(filename), filename, overrides, check_files, elsewhere)


def parse_config(text: str, file: str = "<config>", overrides: Iterable[str] = (), check_files: bool = True,
                 elsewhere: bool = False) -> Config:
    doc = read_yaml(text, file)
    notices: list[str] = []
    if doc.data is None:
        raise UserError([Problem("the file is empty. Start from `trainer init > my.yaml`, or see configs/quickstart.yaml.", "", file, 1, 1)])
    if not isinstance(doc.data, dict):
        raise UserError(
            [doc.problem((), f"the top level must be a section of keys (model:, data:, ...), not {_TYPE_WORDS.get(json_type(doc.data), json_type(doc.data))}.")]
        )
    from trainer.backends.autotrain import convert  # imported here: only AutoTrain files need it

    if convert.is_autotrain_config(doc.data):
        doc, notices = convert.translate_document(doc)
    for override in overrides:
        _apply_override(doc, override)
    if elsewhere:
        _keep_unset_references(doc)
    return check(doc, notices, check_files, here=not elsewhere)


def _keep_unset_references(doc: Document) -> None:
    """A ${VAR} that is not set here is no problem in a config written for another machine: it is written back as it
    was, and checked where the config runs. Meanwhile the schema's default stands in for it, or the value the rest of
    its text gives (`${HF_USERNAME}/model` -> `/model`); with neither, it stays a problem."""
    for path, problems in doc.unset_env.items():
        if path not in doc.env_refs:
            continue
        if "default" in (subschema(path) or {}):
            parent = get_path(doc.data, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
        elif get_path(doc.data, path) in (None, ""):
            continue
        doc.problems = [p for p in doc.problems if not any(p is q for q in problems)]


def check(doc: Document, notices: list[str] | None = None, check_files: bool = True, here: bool = True) -> Config:
    """`here=False`: the rules that only the machine that runs the config can decide are warnings, not problems."""
    schema = load_schema()
    data = coerce_numbers(schema, doc.data)
    problems = list(doc.problems)
    problems += schema_problems(doc, data)
    if problems:
        raise UserError(_sorted(problems), title=_title(doc.file, problems))
    config = build_config(apply_defaults(schema, data), doc.env_refs)
    problems = [doc.problem(path, message) for path, message in rules.check_config(config, check_files, here)]
    if problems:
        raise UserError(_sorted(problems), title=_title(doc.file, problems))
    if not here:
        for path, message in rules.check_local(config):
            warn(str(doc.problem(path, f"on this machine, {message} (checked again where the config runs)")))
    for notice in notices or ():
        note(notice)
    return config


def _title(file: str, problems: list[Problem]) -> str:
    n = len(problems)
    return f"{file}: {n} problem{'s' if n != 1 else ''} found; nothing was run."


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.path))


def _apply_override(doc: Document, override: str) -> None:
    """`--set training.max_steps=5`: the value is read as YAML, the problems point at the command line."""
    import yaml

    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override!r}: write it as --set section.key=value, e.g. --set training.max_steps=5")
    path = tuple(key.strip().split("."))
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):  # ValueError: a date that is not one (2025-02-30)
        value = raw
    if isinstance(value, datetime.date):
        value = raw.strip()  # a date is just text to us, as in yaml_loader
    if isinstance(value, (int, float)) and ":" in raw:
        value = raw.strip()  # YAML 1.1's base 60 (2:4 is 124), as in yaml_loader: min:max is text
    node = doc.data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    doc.overridden.add(path)
    doc.env_refs.pop(path, None)


# ---- schema errors in the user's words -------------------------------------------------------


def schema_problems(doc: Document, data: Any) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = _non_finite(doc, data, ())
    reported = {p.path for p in problems}
    for error in validator.iter_errors(data):
        problems.extend(p for p in _translate(doc, error) if p.path not in reported)
    return problems


def _non_finite(doc: Document, data: Any, path: tuple) -> list[Problem]:
    if isinstance(data, float) and not math.isfinite(data):
        return [doc.problem(path, f"{data} is not a usable number here; write a finite number.")]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _non_finite(doc, v, path + (k,))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _non_finite(doc, v, path + (i,))]
    return []


def _translate(doc: Document, error: jsonschema.ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    shown = _show(doc, path, error.instance)
    if kind == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        extras = [k for k in error.instance if k not in allowed]
        return [doc.problem(path + (k,), _unknown_key(path, k, allowed), key=True) for k in extras]
    if kind == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        out = []
        for key in missing:
            sub = schema.get("properties", {}).get(key, {})
            hint = f" ({sub['description'].rstrip('.')})" if "description" in sub else ""
            example = f" For example: {key}: {sub['examples'][0]}" if sub.get("examples") else ""
            where = f"under `{dotted(path)}`" if path else "at the top level"
            out.append(doc.problem(path, f"the key `{key}` is missing {where}{hint}.{example}"))
        return out
    if kind == "type":
        wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in types_of(schema))
        return [doc.problem(path, f"expected {wanted}, got {_TYPE_WORDS.get(json_type(error.instance), json_type(error.instance))} {shown}.")]
    if kind == "enum":
        options = schema["enum"]
        return [doc.problem(path, f"{shown} is not one of: {', '.join(map(str, options))}.{_did_you_mean(error.instance, options)}")]
    if kind == "const":
        return [doc.problem(path, f"{shown} must be {schema['const']!r}.")]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than", "exclusiveMaximum": "less than"}
        bounds = _bounds_text(schema)
        return [doc.problem(path, f"{shown} is out of range: it must be {words[kind]} {error.validator_value}{bounds}.")]
    if kind in ("minLength", "maxLength"):
        if kind == "minLength":
            return [doc.problem(path, "must not be empty.")]
        return [doc.problem(path, f"is too long: at most {error.validator_value} characters.")]
    if kind in ("minItems", "maxItems"):
        return [doc.problem(path, f"the list needs {'at least' if kind == 'minItems' else 'at most'} {error.validator_value} item(s).")]
    if kind == "uniqueItems":
        return [doc.problem(path, f"the list {shown} repeats an item; list each one once.")]
    if kind == "pattern":
        example = f" For example: {schema['examples'][0]}" if schema.get("examples") else ""
        return [doc.problem(path, f"{shown} is not in the right form. {schema.get('description', '')}{example}".rstrip())]
    if kind in ("anyOf", "oneOf"):
        sub = subschema(path) or schema
        return [doc.problem(path, f"{shown} is not allowed here. {sub.get('description', '')}".rstrip())]
    return [doc.problem(path, f"{shown}: {error.message}")]


def _bounds_text(schema: dict) -> str:
    high = schema.get("maximum")
    if high is None:
        return ""
    if "minimum" in schema:
        return f" (allowed: {schema['minimum']} to {high})"
    if "exclusiveMinimum" in schema:
        return f" (allowed: above {schema['exclusiveMinimum']}, up to {high})"
    return ""


def _show(doc: Document, path: tuple, value: Any) -> str:
    if path in doc.env_refs:
        return f"the value from {doc.env_refs[path]}"  # never echo what came from the environment
    if isinstance(value, dict):
        return "a section"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: Any, options: Iterable[Any]) -> str:
    options = [str(o) for o in options]
    if not isinstance(word, str):
        return ""
    lowered = {o.lower(): o for o in options}
    if word.lower() in lowered:
        return f" Did you mean `{lowered[word.lower()]}`?"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


# Names other tools (TRL, Axolotl, AutoTrain, LLaMA-Factory) use for our keys.
OTHER_TOOLS_NAMES = {
    "lr": "training.learning_rate",
    "num_epochs": "training.epochs",
    "num_train_epochs": "training.epochs",
    "micro_batch_size": "training.batch_size",
    "per_device_train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation",
    "lr_scheduler": "training.scheduler",
    "lr_scheduler_type": "training.scheduler",
    "lora_r": "training.lora.r",
    "lora_alpha": "training.lora.alpha",
    "lora_dropout": "training.lora.dropout",
    "lora_target_modules": "training.lora.target_modules",
    "sequence_len": "data.max_seq_length",
    "max_length": "data.max_seq_length",
    "cutoff_len": "data.max_seq_length",
    "base_model": "model.name_or_path",
    "model_name_or_path": "model.name_or_path",
    "output_dir": "output.dir",
    "datasets": "data.train",
    "dataset": "data.train",
    "bf16": "training.precision",
    "fp16": "training.precision",
}


def _unknown_key(path: tuple, key: str, allowed: list[str]) -> str:
    here = f"under `{dotted(path)}`" if path else "at the top level"
    if key in OTHER_TOOLS_NAMES:
        return f"unknown key `{key}` {here}. trainer calls this `{OTHER_TOOLS_NAMES[key]}`."
    hint = _did_you_mean(key, allowed)
    if not hint:
        home = _section_with_key(key)
        if home is not None and home != path:
            hint = f" `{key}` belongs under `{dotted(home)}`." if home else f" `{key}` belongs at the top level."
        else:
            hint = f" Known keys here: {', '.join(allowed)}."
    return f"unknown key `{key}` {here}.{hint}"


def _section_with_key(key: str) -> tuple | None:
    """The section of the schema that has `key` (or a key close to it), for keys put in the wrong place."""
    from trainer.config.schema import sections

    for path, section in sections(load_schema()):
        if key in section.get("properties", {}):
            return path
    return None
