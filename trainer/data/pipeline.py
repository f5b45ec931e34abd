"""From the config's data section to tokenized train and validation sets, with the report of what happened."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace

from trainer.config import Config
from trainer.data.formats import Example, columns_for, detect_format, to_example
from trainer.data.preference import Pair, detect_pairs, pair_columns, to_pair, tokenize_pair
from trainer.data.records import Record, read_records
from trainer.data.templates import resolve_template
from trainer.data.tokenize import Tokenized, Tokenizer
from trainer.errors import Problem, UserError

SHOWN_PROBLEMS = 20


@dataclass
class SplitReport:
    source: str
    detection: str
    records: int  # readable records plus unreadable lines: everything in the input
    kept: int
    problems: list[Problem] = field(default_factory=list)
    fields: dict = field(default_factory=dict)  # what the examples use: tools, tool calls, reasoning, multi-turn, system prompts


@dataclass
class PreparedData:
    train: list[Tokenized]  # or TokenizedPair for dpo and orpo (trainer/data/preference.py)
    validation: list[Tokenized]
    splits: list[SplitReport]
    template: str
    held_out: bool  # validation was split off the training data
    sources: tuple[list[Example], list[Example]] = ([], [])  # the examples behind train and validation, in order
    features: str | None = None  # what the chat template does (renders tools, keeps reasoning, ...), in words
    encoder: Tokenizer | None = None  # what turned the examples into tokens (for showing them as the model sees them)


def load_examples(ref: str, config: Config) -> tuple[list, SplitReport]:
    """The examples of a file, folder or Hub data set (Pairs for dpo and orpo) and the report of what was found."""
    records, problems = read_records(ref)
    overrides = config.data.columns.to_dict()
    if config.training.objective != "sft" or config.data.format == "preference":
        return load_pairs(ref, records, problems, config)
    if config.data.format == "auto":
        if not records:
            raise UserError(f"{ref}: no readable examples." + (f" First problem: {problems[0]}" if problems else ""))
        if detect_pairs(records, pair_columns(overrides)):
            raise UserError(f"{ref}: the data holds preference pairs (a better and a worse answer), which supervised fine-tuning "
                            "cannot learn from; set training.objective: dpo (or orpo).")
        fmt, detection = detect_format(records, overrides)
    else:
        fmt, detection = config.data.format, f"format {config.data.format} (set in the config)"
    names = columns_for(fmt, overrides)
    examples = []
    for record in records:
        example, found = to_example(record, fmt, names, config.data.train_on)
        problems += found
        if example is not None:
            examples.append(example)
    bad_records = len({(p.file, p.line) for p in problems})
    report = SplitReport(ref, detection, len(examples) + bad_records, len(examples), problems, fields_used(examples))
    return examples, report


def load_pairs(ref: str, records: list[Record], problems: list[Problem], config: Config) -> tuple[list[Pair], SplitReport]:
    names = pair_columns(config.data.columns.to_dict())
    found = detect_pairs(records, names)
    if found is None:
        keys = ", ".join(sorted(records[0].row)) if records else "none"
        raise UserError(f"{ref}: {config.training.objective} learns from preference pairs, and no record here is one (the first has the "
                        f"columns: {keys}). Write input/preferred_output/non_preferred_output (OpenAI's preference format) or "
                        "prompt/chosen/rejected (TRL's); map other column names with data.columns.chosen and data.columns.rejected.")
    layout, hits = found
    pairs = []
    for record in records:
        pair, trouble = to_pair(record, names)
        problems += trouble
        if pair is not None:
            pairs.append(pair)
    bad_records = len({(p.file, p.line) for p in problems})
    shown = "input/preferred_output/non_preferred_output" if layout == "openai" else "/".join(names[c] for c in ("prompt", "chosen", "rejected"))
    detection = f"detected preference pairs ({layout} layout): {shown} in {hits} of {min(len(records), 100)} rows"
    report = SplitReport(ref, detection, len(pairs) + bad_records, len(pairs), problems, fields_used([p.chosen for p in pairs]))
    return pairs, report


def fields_used(examples: list[Example]) -> dict:
    """How many examples use each kind of content, for the data report."""
    chats = [e for e in examples if e.messages]
    return {
        "examples": len(examples),
        "tools": sum(1 for e in chats if e.tools),
        "tool_calls": sum(1 for e in chats if any(m.tool_calls for m in e.messages)),
        "reasoning": sum(1 for e in chats if any(m.reasoning for m in e.messages)),
        "multi_turn": sum(1 for e in chats if sum(m.role == "assistant" for m in e.messages) > 1),
        "system_prompt": sum(1 for e in chats if e.messages[0].role == "system"),
    }


def split_turns(example: Example) -> list[Example]:
    """data.turns: each: one example per trained assistant turn, ending with it (earlier answers are context, not trained),
    so a template that renders the last turn differently from earlier ones trains every turn as it is generated."""
    if example.messages is None:
        return [example]
    pieces = []
    for i, message in enumerate(example.messages):
        if message.role == "assistant" and message.trained:
            context = tuple(replace(m, trained=False) if m.role == "assistant" else m for m in example.messages[:i])
            pieces.append(Example(context + (message,), None, example.file, example.line, example.tools))
    return pieces


def split_validation(examples: list, share: float, seed: int) -> tuple[list, list]:
    if share <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = min(len(examples) - 1, max(1, round(share * len(examples))))
    held = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def prepare_data(config: Config, tokenizer, stop_on_problems: bool = True) -> PreparedData:
    """Load, check, split and tokenize. With on_invalid: error, any problem stops here, listed (unless the caller reports them)."""
    train_examples, train_report = load_examples(config.data.train, config)
    splits = [train_report]
    held_out = config.data.validation is None
    if held_out:
        train_examples, validation_examples = split_validation(train_examples, config.data.validation_split, config.training.seed)
    else:
        validation_examples, validation_report = load_examples(config.data.validation, config)
        splits.append(validation_report)

    if config.data.turns == "each" and config.training.objective == "sft":
        train_examples = [piece for e in train_examples for piece in split_turns(e)]
        validation_examples = [piece for e in validation_examples for piece in split_turns(e)]
    template = resolve_template(config.data.chat_template, tokenizer) if config.data.format != "text" else None
    encode = Tokenizer(tokenizer, template or _NO_TEMPLATE, config.data.train_on, config.data.max_seq_length,
                       fold_system=config.data.system_prompt == "fold", model_name=model_label(config))
    tokenized, sources = [], []
    for examples, report in ((train_examples, train_report), (validation_examples, splits[-1])):
        out, kept, refused = [], [], set()
        for example in examples:
            result, problem = encode(example) if isinstance(example, Example) else tokenize_pair(encode, example, len(out))
            if problem:
                if (example.file, example.line) not in refused:  # with data.turns: each, a record's pieces fail alike
                    refused.add((example.file, example.line))
                    report.problems.append(problem)
                    report.kept -= 1
            else:
                out.append(result)
                kept.append(example)
        tokenized.append(out)
        sources.append(kept)
    if config.data.on_invalid == "error" and stop_on_problems:
        _stop_on_problems(splits)
    features = encode.features.describe() if template is not None and (train_examples or validation_examples) else None
    prepared = PreparedData(tokenized[0], tokenized[1], splits, template.name if template else "none (plain text)", held_out,
                            (sources[0], sources[1]), features, encode)
    if not stop_on_problems:  # `trainer data` explains whatever it found, even when nothing is usable
        return prepared
    if not tokenized[0]:
        raise UserError(f"{config.data.train}: no usable training examples are left.")
    if not any(e.trained for e in tokenized[0]):
        lost = sum(e.trained_lost for e in tokenized[0])
        raise UserError(
            f"{config.data.train}: no example has a token to learn from"
            + (f": every answer is cut off by data.max_seq_length={config.data.max_seq_length} ({lost} answer tokens lost). "
               "Raise data.max_seq_length (`trainer data --config ...` shows the lengths)." if lost else
               ": check data.train_on and that the examples have assistant answers.")
        )
    return prepared


_NO_TEMPLATE = resolve_template("chatml", None)


def model_label(config: Config) -> str:
    """The model as messages name it: its file or folder name, or its Hub id."""
    name = config.model.name_or_path
    return os.path.basename(name.rstrip("/")) if os.path.exists(os.path.expanduser(name)) else name


def _stop_on_problems(splits: list[SplitReport]) -> None:
    problems = [p for s in splits for p in s.problems]
    if not problems:
        return
    shown = problems[:SHOWN_PROBLEMS]
    rest = len(problems) - len(shown)
    title = (
        f"{len(problems)} problem(s) in the data; nothing was trained. Fix them, or set data.on_invalid: skip "
        "to leave those examples out (they are listed in the report)."
    )
    if rest:
        shown = shown + [Problem(f"... and {rest} more problem(s): run `trainer data --config ...` with on_invalid: skip to list every one.")]
    raise UserError(shown, title=title)
