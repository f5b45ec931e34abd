"""Prompts for grpo: the conversations the model answers during reinforcement fine-tuning, each with the fields its
graders read, in the two layouts people write them in.

openai  {"messages": [..., {"role": "user", ...}], "answer": ...}   OpenAI's reinforcement fine-tuning format: the
                                                                   conversation ends with the user's turn, and any
                                                                   other field is for the graders (item.answer)
trl     {"prompt": "text" or [messages], "answer": ...}             TRL's prompt-only format, the same way

The whole record is the grader's `item`, so `{{ item.answer }}` reads the record's "answer". A record that ends with an
assistant turn has the answer grpo is to write itself: it is a problem at its file:line, as is a record missing a
field a grader reads (checked on the first records, as the format is detected from them).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.data.build import DETECT_SAMPLE, SplitReport, held_out
from trainer.data.conversations import Message, chat_messages, parse_tools
from trainer.data.records import Record, read_records
from trainer.errors import Problem, UserError

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.data.tokenize import Tokenizer
    from trainer.reinforcement.rewards import Reward

MESSAGES_NAMES = {"messages": "messages", "role": "role", "content": "content", "system": "system"}


@dataclass(frozen=True)
class Prompt:
    messages: tuple[Message, ...]  # ending with the user's turn
    item: Mapping[str, Any]  # the record as read: what the graders' {{ item.x }} see
    file: str
    line: int
    tools: tuple[dict, ...] | None = None
    input_ids: tuple[int, ...] = ()  # rendered with the chat template's generation prompt (encode_prompts)


@dataclass
class PromptSet:
    train: list[Prompt]
    validation: list[Prompt]
    splits: list[SplitReport]


def prompt_layout(row: Mapping[str, Any], names: Mapping[str, str]) -> str | None:
    """'openai', 'trl' or None: which prompt layout a record is in."""
    turns = row.get(names["messages"])
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        return "openai"
    if names["prompt"] in row and not any(k in row for k in ("completion", "chosen", "rejected")):
        return "trl"
    return None


def detect_prompts(records: Sequence[Record], names: Mapping[str, str]) -> tuple[str, int] | None:
    """(the layout most of the first records are in, how many), or None when none is."""
    head = records[:DETECT_SAMPLE]
    layouts = [prompt_layout(r.row, names) for r in head]
    counts = {layout: layouts.count(layout) for layout in ("openai", "trl")}
    best = max(counts, key=lambda k: counts[k])
    return (best, counts[best]) if counts[best] else None


def to_prompt(record: Record, layout: str, names: Mapping[str, str]) -> tuple[Prompt | None, list[Problem]]:
    """One record as a Prompt, or the problems that stop it from being one."""
    row = record.row
    tools = None
    if layout == "trl" and isinstance(row.get(names["prompt"]), str):
        text = row[names["prompt"]]
        if not text.strip():
            return None, [record.problem(f"the {names['prompt']!r} column must be non-empty text or a list of messages.")]
        messages, problems = [Message("user", text, False)], list[Problem]()
    else:
        column = names["messages"] if layout == "openai" else names["prompt"]
        messages, problems = chat_messages(Record({MESSAGES_NAMES["messages"]: row.get(column)}, record.file, record.line), "messages",
                                           {**MESSAGES_NAMES, "messages": MESSAGES_NAMES["messages"]})
        if isinstance(row.get("tools"), list) and row["tools"]:
            tools, found = parse_tools(record, row["tools"], "tools")
            problems += found
    if problems:
        return None, problems
    if not messages or messages[-1].role != "user":
        ends = messages[-1].role if messages else "nothing"
        return None, [record.problem(f"grpo's prompts end with the user's turn (the model writes the answer), and this one ends with "
                                     f"{'an' if ends == 'assistant' else 'a'} {ends} turn; remove it, and keep a reference answer in a "
                                     "field the graders read (e.g. \"answer\": ... read as {{ item.answer }}).")]
    system = row.get(names["system"])
    if isinstance(system, str) and system.strip() and messages[0].role != "system":
        messages.insert(0, Message("system", system, False))
    return Prompt(tuple(messages), row, record.file, record.line, tuple(tools) if tools else None), []


def missing_fields(prompts: Sequence[Prompt], rewards: Sequence[Reward], sample: int = DETECT_SAMPLE) -> list[Problem]:
    """A problem for each of the first prompts that lacks a field a grader reads (item.answer on data without "answer")."""
    from trainer.graders import fields_read

    wanted = [(reward.name, field) for reward in rewards for field in sorted(fields_read(reward.grader))]
    problems = []
    for prompt in prompts[:sample]:
        for name, field in wanted:
            if not _has_field(prompt.item, field):
                problems.append(Problem(f"the grader {name!r} reads item.{field}, and this record has no field {field!r}; add it to "
                                        "every record, or change the grader (its fields are the record's keys).", "", prompt.file, prompt.line))
    return problems


def _has_field(item: Any, dotted: str) -> bool:
    node = item
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def read_prompt_source(ref: str, config: Config, rewards: Sequence[Reward]) -> tuple[list[Prompt], SplitReport]:
    """Every prompt of a file, folder or Hub data set, and the report of what was found (problems with file:line)."""
    records, problems = read_records(ref)
    unreadable = len(problems)
    overrides = {k: v for k, v in config.data.columns.to_dict().items() if v is not None}
    names = {"messages": overrides.get("messages", "messages"), "prompt": overrides.get("prompt", "prompt"),
             "system": overrides.get("system", "system")}
    found = detect_prompts(records, names)
    if found is None:
        keys = ", ".join(sorted(records[0].row)) if records else "none"
        raise UserError(f"{ref}: grpo learns from prompts, and no record here is one (the first has the columns: {keys}). Write "
                        "{\"messages\": [..., {\"role\": \"user\", ...}], ...} (OpenAI's reinforcement format) or {\"prompt\": ..., ...} "
                        "(TRL's prompt-only format), with the fields the graders read beside it; map other column names with "
                        "data.columns.messages or data.columns.prompt.")
    layout, hits = found
    prompts = []
    for record in records:
        prompt, found_problems = to_prompt(record, layout, names)
        problems += found_problems
        if prompt is not None:
            prompts.append(prompt)
    problems += missing_fields(prompts, rewards)
    shown = f"{names['messages']} ending with a user turn" if layout == "openai" else names["prompt"]
    detection = f"detected grpo prompts ({layout} layout): {shown} in {hits} of {min(len(records), DETECT_SAMPLE)} rows"
    bad = {(p.file, p.line) for p in problems}
    kept = [p for p in prompts if (p.file, p.line) not in bad]
    return kept, SplitReport(ref, detection, len(records) + unreadable, len(kept), problems)


def read_prompts(config: Config, rewards: Sequence[Reward]) -> PromptSet:
    """data.train's prompts and the validation prompts (data.validation, or the held-out share of data.train, chosen as
    for any data: pipeline.split_validation's seed and order)."""
    train, report = read_prompt_source(config.data.train, config, rewards)
    splits = [report]
    if config.data.validation is not None:
        validation, validation_report = read_prompt_source(config.data.validation, config, rewards)
        splits.append(validation_report)
    else:
        held = set(held_out(len(train), config.data.validation_split, config.training.seed))
        train, validation = [p for i, p in enumerate(train) if i not in held], [p for i, p in enumerate(train) if i in held]
    return PromptSet(train, validation, splits)


def check_prompts(prompt_set: PromptSet, on_invalid: str) -> None:
    """With data.on_invalid: error, every problem stops the run here, listed; with skip, those prompts are left out
    (already: read_prompt_source keeps only the good ones). No prompt at all stops it either way."""
    from trainer.data.pipeline import SHOWN_PROBLEMS

    problems = [p for s in prompt_set.splits for p in s.problems]
    if problems and on_invalid == "error":
        shown = problems[:SHOWN_PROBLEMS] + ([Problem(f"... and {len(problems) - SHOWN_PROBLEMS} more")] if len(problems) > SHOWN_PROBLEMS else [])
        raise UserError(shown, title=f"{len(problems)} problem(s) in the prompts; nothing was trained. Fix them, or set data.on_invalid: "
                                     "skip to leave those prompts out.")
    if not prompt_set.train:
        raise UserError(f"{prompt_set.splits[0].source}: no usable prompts are left.")


def describe(prompt_set: PromptSet) -> str:
    """What `trainer data` says about grpo's prompts: per source what was found and kept, and each problem."""
    lines = []
    for split in prompt_set.splits:
        lines.append(f"{split.source}: {split.detection}; {split.kept} of {split.records} records are usable prompts")
        lines += [f"  {p}" for p in split.problems]
    lines.append(f"Prompts: {len(prompt_set.train)} for training, {len(prompt_set.validation)} held out for validation")
    return "\n".join(lines)


def encode_prompts(prompts: Sequence[Prompt], encode: Tokenizer, max_length: int) -> tuple[list[Prompt], list[Problem]]:
    """Each prompt with its token ids (the chat template's generation prompt at the end); one longer than `max_length`
    (data.max_seq_length less the answer's room) is a problem, not cut: a cut prompt asks another question."""
    from dataclasses import replace

    out, problems = [], []
    for prompt in prompts:
        text = encode.render(encode.template_messages(prompt.messages), generation_prompt=True, tools=prompt.tools)
        ids = encode.encode(text)
        if len(ids) > max_length:
            problems.append(Problem(f"the prompt is {len(ids)} tokens, and data.max_seq_length less training.grpo.max_completion_length "
                                    f"leaves {max_length}; raise data.max_seq_length, or shorten the prompt.", "", prompt.file, prompt.line))
            continue
        out.append(replace(prompt, input_ids=tuple(ids)))
    return out, problems
