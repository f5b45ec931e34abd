"""Records to tokenized rows, chunk by chunk, in worker processes when the input is large.

The main process reads the input as a stream (records.iter_items) and hands out chunks of CHUNK items; each
worker parses, checks and tokenizes its chunk (one render per conversation, one tokenizer call per chunk) and
sends back columns for the store and the problems it found, each with its file and line. Chunks come back
in input order, and at most a few are in flight, so memory does not grow with the input.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from trainer.data.checks import ROLE_BITS
from trainer.data.formats import Example, to_example
from trainer.data.preference import Pair, to_pair
from trainer.data.records import Item, Record, parse_item
from trainer.data.tokenize import IGNORE, Tokenized, Tokenizer
from trainer.errors import Problem

CHUNK = 1000  # items per chunk: one tokenizer call, one record batch in the store
PREFERENCE = "preference"  # the format of preference pairs (dpo, orpo): each pair is two rows, chosen then rejected


@dataclass(frozen=True)
class Job:
    """What a worker needs to turn a chunk of one source into rows (sent once, when the worker starts)."""

    source: int  # 0: data.train, 1: data.validation
    fmt: str
    names: dict
    train_on: str
    turns: str
    encoder: Tokenizer


@dataclass
class ChunkResult:
    columns: dict  # for StoreWriter.write; the "example" column counts from 0 within the chunk
    records: dict = field(default_factory=dict)  # for examples.arrow: each valid example's record as read (example_columns)
    read_problems: list[Problem] = field(default_factory=list)  # lines that could not be read
    example_problems: list[Problem] = field(default_factory=list)  # records that are not valid examples
    token_problems: list[tuple[int, Problem]] = field(default_factory=list)  # (example in chunk, problem): refused by the template or tokenizer
    examples: int = 0  # valid examples
    bad_records: int = 0  # records with a read or example problem
    fields: Counter = field(default_factory=Counter)  # what the valid examples use (pipeline.fields_used)
    items: int = 0


def default_workers() -> int:
    """The cores this process may use (data.num_workers when it is not set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_chunks(chunks: Iterator[list[Item]], job: Job, workers: int) -> Iterator[ChunkResult]:
    """The results of every chunk, in order; in `workers` processes when there is more than one chunk."""
    first = next(chunks, None)
    second = next(chunks, None) if first is not None else None
    if first is None:
        return
    if workers <= 1 or second is None:
        _start_worker(job, in_process=True)
        for chunk in itertools.chain([first], [second] if second is not None else [], chunks):
            yield prepare_chunk(chunk)
        return
    # fork: workers inherit the tokenizer and the probed template instead of loading them again
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(job,)) as pool:
        pending: deque[Future] = deque()
        for chunk in itertools.chain([first, second], chunks):
            pending.append(pool.submit(prepare_chunk, chunk))
            if len(pending) >= 2 * workers:  # a bounded window: reading never runs far ahead of tokenizing
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def chunked(items: Iterator[Item], size: int = CHUNK) -> Iterator[list[Item]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


_JOB: Job | None = None


def _start_worker(job: Job, in_process: bool = False) -> None:
    global _JOB
    _JOB = job
    if not in_process:  # each worker is one core; the Rust tokenizer's own threads would only compete with the others
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker ends when the main process is gone (killed): the pool's queues never tell it."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def prepare_chunk(items: list[Item]) -> ChunkResult:
    """Parse, check and tokenize one chunk (in a worker, or in the main process)."""
    job = _JOB
    assert job is not None, "prepare_chunk runs after _start_worker"
    result = ChunkResult(columns={}, items=len(items))
    pieces: list[tuple[int, int, Example]] = []  # (example in chunk, piece, example to tokenize)
    examples: list = []  # Examples, or Pairs (preference.py)
    kept_records: list[tuple[Item, Record]] = []  # the valid examples' records, for examples.arrow
    for item in items:
        record = parse_item(item)
        if isinstance(record, Problem):
            result.read_problems.append(record)
            result.bad_records += 1
        elif isinstance(record, Record):
            example, problems = convert(record, job.fmt, job.names, job.train_on)
            result.example_problems += problems
            result.bad_records += bool(problems)
            if example is not None:
                examples.append(example)
                kept_records.append((item, record))
    result.examples = len(examples)
    chats = [e.chosen for e in examples] if job.fmt == PREFERENCE else examples
    result.records = example_columns(kept_records, chats)
    result.fields = Counter(fields_of(chats))
    for k, example in enumerate(examples):
        parts = [example.chosen, example.rejected] if job.fmt == PREFERENCE else split_turns(example) if job.turns == "each" else [example]
        pieces += [(k, p, part) for p, part in enumerate(parts)]
    encoded = job.encoder.encode_batch([p[2] for p in pieces])
    kept, result.token_problems = _pairs_kept(pieces, encoded, job.encoder.max_length) if job.fmt == PREFERENCE else _kept(pieces, encoded)
    result.columns = _columns(job.source, kept)
    return result


Kept = list[tuple[int, int, Example, Tokenized]]


def _kept(pieces: list[tuple[int, int, Example]], encoded: list) -> tuple[Kept, list[tuple[int, Problem]]]:
    kept: Kept = []
    problems: list[tuple[int, Problem]] = []
    refused: set = set()
    for (k, p, example), out in zip(pieces, encoded):
        if isinstance(out, Problem):
            if (example.file, example.line) not in refused:  # with data.turns: each, a record's pieces fail alike
                refused.add((example.file, example.line))
                problems.append((k, out))
        else:
            kept.append((k, p, example, out))
    return kept, problems


def _pairs_kept(pieces: list[tuple[int, int, Example]], encoded: list, max_length: int) -> tuple[Kept, list[tuple[int, Problem]]]:
    """Both sides of a pair, or its one problem (preference.tokenize_pair's rules: a side with nothing left to train stops it)."""
    kept: Kept = []
    problems: list[tuple[int, Problem]] = []
    for at in range(0, len(pieces), 2):
        sides = list(zip(pieces[at : at + 2], encoded[at : at + 2]))
        why = None
        for name, ((k, _, example), out) in zip(("chosen", "rejected"), sides):
            if isinstance(out, Problem):
                why = out
            elif not out.trained:
                cut = f" (all {out.trained_lost} of its tokens are past data.max_seq_length={max_length}; raise it)" if out.trained_lost else ""
                why = Problem(f"the {name} answer has no token to learn from{cut}.", "", example.file, example.line)
            if why is not None:
                break
        if why is not None:
            problems.append((sides[0][0][0], why))
        else:
            kept += [(k, p, example, out) for (k, p, example), out in sides]
    return kept, problems


def _columns(source: int, kept: Kept) -> dict:
    ids = [t.input_ids for _, _, _, t in kept]
    labels = [t.labels for _, _, _, t in kept]

    def numbers(values: list[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int32)

    return {
        "input_ids": ids,
        "labels": labels,
        "length": numbers([len(i) for i in ids]),
        "full_length": numbers([t.full_length for _, _, _, t in kept]),
        "trained": numbers([int(np.count_nonzero(np.asarray(lab) != IGNORE)) for lab in labels]),
        "trained_lost": numbers([t.trained_lost for _, _, _, t in kept]),
        "reasoning_dropped": numbers([t.reasoning_dropped for _, _, _, t in kept]),
        "file": [t.file for _, _, _, t in kept],
        "line": numbers([t.line for _, _, _, t in kept]),
        "source": numbers([source] * len(kept)),
        "example": numbers([k for k, _, _, _ in kept]),
        "piece": numbers([p for _, p, _, _ in kept]),
        "messages": numbers([len(e.messages) if e.messages else 0 for _, _, e, _ in kept]),
        "roles": numbers([sum(ROLE_BITS.get(r, 0) for r in {m.role for m in e.messages or ()}) for _, _, e, _ in kept]),
        # 8 bytes of a hash of the ids: duplicates and train/validation overlap without keeping the ids in memory
        "digest": np.asarray([int.from_bytes(hashlib.blake2b(np.ascontiguousarray(i, dtype=np.int32).tobytes(), digest_size=8).digest(),
                                             "little", signed=True) for i in ids], dtype=np.int64),
    }


def convert(record: Record, fmt: str, names: dict, train_on: str) -> tuple[Example | Pair | None, list[Problem]]:
    """A record as an Example (a Pair for preference data), or the problems that stop it from being one."""
    return to_pair(record, names) if fmt == PREFERENCE else to_example(record, fmt, names, train_on)


def example_columns(records: list[tuple[Item, Record]], chats: list[Example]) -> dict:
    """examples.arrow's columns for valid examples: the record as read (a JSON Lines line as it is, other rows as JSON),
    its file and line, and how many non-system turns its conversation has (the chosen one of a pair)."""
    return {
        "record": [_record_text(item, record) for item, record in records],
        "file": [record.file for _, record in records],
        "line": np.asarray([record.line for _, record in records], dtype=np.int32),
        "turns": np.asarray([sum(m.role != "system" for m in e.messages or ()) for e in chats], dtype=np.int32),
    }


def _record_text(item: Item, record: Record) -> str:
    if isinstance(item, tuple):  # a JSON Lines line, kept as it is (parse_item found it to be UTF-8 JSON)
        return item[2].decode("utf-8").rstrip("\r\n")
    return json.dumps(record.row, ensure_ascii=False, default=str)  # a CSV, Parquet, .json or Hub row


def fields_of(examples: list[Example]) -> dict:
    """How many examples use each kind of content, for the data report."""
    chats = [e for e in examples if e.messages]
    return {
        "examples": len(examples),
        "tools": sum(1 for e in chats if e.tools),
        "tool_calls": sum(1 for e in chats if any(m.tool_calls for m in e.messages or ())),
        "reasoning": sum(1 for e in chats if any(m.reasoning for m in e.messages or ())),
        "multi_turn": sum(1 for e in chats if sum(m.role == "assistant" for m in e.messages or ()) > 1),
        "system_prompt": sum(1 for e in chats if e.messages and e.messages[0].role == "system"),
    }


def split_turns(example: Example) -> list[Example]:
    """data.turns: each: one example per trained assistant turn, ending with it (earlier answers are context, not trained),
    so a template that renders the last turn differently from earlier ones trains every turn as it is generated."""
    from dataclasses import replace

    if example.messages is None:
        return [example]
    pieces = []
    for i, message in enumerate(example.messages):
        if message.role == "assistant" and message.trained:
            context = tuple(replace(m, trained=False) if m.role == "assistant" else m for m in example.messages[:i])
            pieces.append(Example(context + (message,), None, example.file, example.line, example.tools))
    return pieces
