"""One data-cache entry built from the sources (train, then validation when given), and an entry loaded back.

Building streams each source through prepare.run_chunks into one store file (rows.arrow), then picks the
held-out validation share exactly as split_validation does on the list of examples (same seed, same order),
writes which rows each split has (train.npy, validation.npy) and the reports (meta.json), and renames the
folder into place (cache.publish). Beside the rows, examples.arrow keeps every valid example's record as read (one row
per example of each source, in order, with its file, line and number of turns), so evaluation and `trainer data --show`
get the conversations back without reading the data again (examples.py).
"""
from __future__ import annotations

import itertools
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from trainer.config import Config
from trainer.data import cache
from trainer.data.formats import columns_for, detect_format
from trainer.data.preference import detect_pairs, pair_columns
from trainer.data.prepare import CHUNK, PREFERENCE, Job, chunked, default_workers, run_chunks
from trainer.data.records import Item, Record, iter_items, parse_item
from trainer.data.store import PairRows, Rows, Store, StoreWriter
from trainer.data.templates import ChatTemplate
from trainer.data.tokenize import Tokenizer
from trainer.errors import Problem, UserError

DETECT_SAMPLE = 100  # records the format is detected from (formats.detect_format)
SEQUENCE_COLUMNS = ("input_ids", "labels")
EXAMPLES_FILE = "examples.arrow"
RECORD_COLUMNS = ("record", "file", "line", "turns", "source")
NUMBER_COLUMNS = ("length", "full_length", "trained", "trained_lost", "reasoning_dropped", "line", "source", "example", "piece",
                  "messages", "roles", "digest")


@dataclass
class SplitReport:
    source: str
    detection: str
    records: int  # readable records plus unreadable lines: everything in the input
    kept: int
    problems: list[Problem] = field(default_factory=list)
    fields: dict = field(default_factory=dict)  # what the examples use: tools, tool calls, reasoning, multi-turn, system prompts
    variants: dict = field(default_factory=dict)  # examples per named template of the tokenizer ("default", "tool_use"), when it has several


def held_out(count: int, share: float, seed: int) -> list[int]:
    """Which of `count` examples are held out for validation (pipeline.split_validation's choice)."""
    if share <= 0 or count < 2:
        return []
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n = min(count - 1, max(1, round(share * count)))
    return order[:n]


@dataclass
class _Source:
    report: SplitReport
    examples: int
    fmt: str
    names: dict
    token_problems: list[tuple[int, Problem]]  # (example number in the source, problem)


def build_entry(config: Config, encode: Tokenizer, key: str, inputs: dict, progress: bool) -> Path:
    """Prepare every source into a new cache entry and return its folder."""
    temp = cache.new_temp_dir(key)
    try:
        _build(temp, config, encode, inputs, progress)
    except BaseException:  # a problem in the data, Ctrl-C: nothing half-written stays (a SIGKILL leaves it to the next run)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return cache.publish(temp, key)


def _build(temp: Path, config: Config, encode: Tokenizer, inputs: dict, progress: bool) -> None:
    started = time.time()
    writer, records = StoreWriter(temp / "rows.arrow"), StoreWriter(temp / EXAMPLES_FILE)
    refs = [config.data.train] + ([config.data.validation] if config.data.validation else [])
    bar = _progress_bar(inputs.get("lines"), progress)
    try:
        sources = [_prepare_source(s, ref, config, encode, (writer, records), bar) for s, ref in enumerate(refs)]
    finally:
        bar.close()
        writer.close(SEQUENCE_COLUMNS + NUMBER_COLUMNS)
        records.close(RECORD_COLUMNS)
    store = Store(temp / "rows.arrow")
    source, example = store.numbers("source"), store.numbers("example")
    if config.data.validation is None:
        held = np.zeros(sources[0].examples, dtype=bool)
        held[held_out(sources[0].examples, config.data.validation_split, config.training.seed)] = True
        in_validation = held[example] if len(example) else np.zeros(0, dtype=bool)
        train_rows, validation_rows = np.flatnonzero(~in_validation), np.flatnonzero(in_validation)
        # problems in the order trainer reported them before the cache: training examples' first, then held-out ones'
        sources[0].token_problems.sort(key=lambda item: bool(held[item[0]]))
    else:
        train_rows, validation_rows = np.flatnonzero(source == 0), np.flatnonzero(source == 1)
    if sources[0].fmt == PREFERENCE:  # a pair is two rows, chosen then rejected; a split lists its chosen rows
        piece = store.numbers("piece")
        train_rows, validation_rows = train_rows[piece[train_rows] == 0], validation_rows[piece[validation_rows] == 0]
    np.save(temp / "train.npy", train_rows.astype(np.int64))
    np.save(temp / "validation.npy", validation_rows.astype(np.int64))
    for s in sources:
        s.report.problems += [p for _, p in s.token_problems]
        s.report.kept -= len(s.token_problems)
    features = encode.describe() if _has_chats(sources, config) else None
    cache.write_meta(temp, {
        "rows": len(store), "created": time.time(), "seconds": round(time.time() - started, 2), "inputs": inputs,
        "features": features, "formats": [[s.fmt, s.names] for s in sources],
        "splits": [dict(asdict(s.report), problems=[asdict(p) for p in s.report.problems]) for s in sources],
    })


def _has_chats(sources: list[_Source], config: Config) -> bool:
    return config.data.format != "text" and any(s.examples for s in sources)


def data_format(ref: str, records: list[Record], problems: list[Problem], config: Config) -> tuple[str, dict, str]:
    """(format, column names, a sentence saying how it was found) from the first records: preference pairs for dpo
    and orpo, else the format the config sets or the one most of the first records are in."""
    from trainer.objectives import objective_for

    overrides = config.data.columns.to_dict()
    if objective_for(config).pairs or config.data.format == "preference":
        names = pair_columns(overrides)
        found = detect_pairs(records, names)
        if found is None:
            keys = ", ".join(sorted(records[0].row)) if records else "none"
            raise UserError(f"{ref}: {config.training.objective} learns from preference pairs, and no record here is one (the first has the "
                            f"columns: {keys}). Write input/preferred_output/non_preferred_output (OpenAI's preference format) or "
                            "prompt/chosen/rejected (TRL's); map other column names with data.columns.chosen and data.columns.rejected.")
        layout, hits = found
        shown = "input/preferred_output/non_preferred_output" if layout == "openai" else "/".join(names[c] for c in ("prompt", "chosen", "rejected"))
        return PREFERENCE, names, f"detected preference pairs ({layout} layout): {shown} in {hits} of {min(len(records), DETECT_SAMPLE)} rows"
    if config.data.format != "auto":
        return config.data.format, columns_for(config.data.format, overrides), f"format {config.data.format} (set in the config)"
    if not records:
        raise UserError(f"{ref}: no readable examples." + (f" First problem: {problems[0]}" if problems else ""))
    if detect_pairs(records, pair_columns(overrides)):
        raise UserError(f"{ref}: the data holds preference pairs (a better and a worse answer), which supervised fine-tuning "
                        "cannot learn from; set training.objective: dpo (or orpo).")
    fmt, detection = detect_format(records, overrides)
    return fmt, columns_for(fmt, overrides), detection


def _prepare_source(number: int, ref: str, config: Config, encode: Tokenizer, writers: tuple[StoreWriter, StoreWriter], bar: Any) -> _Source:
    items = iter_items(ref)
    head, records, problems = _head(items)
    fmt, names, detection = data_format(ref, records, problems, config)
    if fmt != "text":
        encode.probe()  # probe the templates once, here, so forked workers inherit them
    job = Job(number, fmt, names, config.data.train_on, config.data.turns, encode)
    read, invalid, refused = [], [], []
    examples = bad = 0
    fields: dict = {}
    for result in run_chunks(chunked(itertools.chain(head, items), CHUNK), job, config.data.num_workers or default_workers()):
        result.columns["example"] = result.columns["example"] + examples
        writers[0].write(result.columns)
        writers[1].write(dict(result.records, source=np.full(result.examples, number, dtype=np.int32)))
        read += result.read_problems
        invalid += result.example_problems
        refused += [(examples + k, p) for k, p in result.token_problems]
        examples += result.examples
        bad += result.bad_records
        fields = {k: fields.get(k, 0) + v for k, v in result.fields.items()}
        bar.update(result.items)
    fields = fields or {"examples": 0}
    report = SplitReport(ref, detection, examples + bad, examples, read + invalid, fields, _variants(encode.template, fields) if fmt != "text" else {})
    return _Source(report, examples, fmt, names, refused)


def _variants(template: ChatTemplate, fields: dict) -> dict:
    """How many examples each of the tokenizer's named templates renders: the tool_use one those with tools (apply_chat_template's
    choice, Tokenizer.template_for), the other one the rest."""
    if template.tool_use is not None:
        with_tools = fields.get("tools", 0)
        return {template.variant: fields["examples"] - with_tools, template.tool_use.variant: with_tools}
    return {template.variant: fields["examples"]} if template.variant else {}


def _head(items: Iterator[Item]) -> tuple[list[Item], list[Record], list[Problem]]:
    """The first items, up to one record past the detection sample (so detect_format can tell "the first 100")."""
    head: list[Item] = []
    records: list[Record] = []
    problems: list[Problem] = []
    for item in items:
        head.append(item)
        found = parse_item(item)
        if isinstance(found, Record):
            records.append(found)
            if len(records) > DETECT_SAMPLE:
                break
        elif found is not None:
            problems.append(found)
    return head, records, problems


def _progress_bar(total: int | None, shown: bool) -> Any:
    """tqdm's bar (examples/s and the time left) for inputs of more than one chunk."""
    from tqdm import tqdm

    big = total is None or total > CHUNK
    every = 1.0 if sys.stderr.isatty() else 30.0  # in a log file, a line every 30 s
    return tqdm(total=total, unit=" records", unit_scale=True, desc="Preparing data", file=sys.stderr, mininterval=every,
                disable=not (shown and big), smoothing=0.1)


def load_entry(folder: Path) -> tuple[Rows, Rows, list[SplitReport], dict]:
    """(train rows, validation rows, reports, meta) of a complete cache entry, memory-mapped (PairRows for pairs)."""
    meta = cache.read_meta(folder)
    store = Store(folder / "rows.arrow")
    kind = PairRows if meta["formats"][0][0] == PREFERENCE else Rows
    train = kind(store, np.load(folder / "train.npy", mmap_mode="r"))
    validation = kind(store, np.load(folder / "validation.npy", mmap_mode="r"))
    splits = [SplitReport(**dict(s, problems=[Problem(**p) for p in s["problems"]])) for s in meta["splits"]]
    return train, validation, splits, meta
