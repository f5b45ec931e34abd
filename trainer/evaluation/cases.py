"""What an evaluation runs on: its cases, and the training examples few-shot prompting and retrieval draw from.

Both come from the data cache (data/cache.py), prepared as training prepares them when the entry is not there yet:
the cases are the examples of the validation file or of the held-out share (the same share training held out), or of
evaluation.test; the pool is the training examples with a question and an answer (the chosen side of preference
pairs), in input order. The pool is a Sequence that makes each example from its cached record when it is asked
for, so few-shot prompting and retrieval touch a handful of them, and the BM25 index of the pool is kept beside the
cache entry (bm25-*/), so a second evaluation maps it instead of indexing the training data again.

A grpo run is evaluated on prompts it did not train on (prompt_cases): they have no reference answer, and no worked
examples to show. Graders (evaluation.graders, or grpo's own) score each answer against the case's `item`
(with_items): for chat data the record the case came from plus `reference`, its final answer's text; for a prompt its
record as training's graders saw it.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np

from trainer.config import Config
from trainer.data.build import held_out
from trainer.data.examples import CachedExamples
from trainer.data.formats import Example
from trainer.data.preference import Pair
from trainer.errors import UserError
from trainer.evaluation.prompts import Case, message_dict, to_case

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INDEX_VERSION = 1  # of the BM25 index kept in the entry (retrieval.user_text and its tokenizing): a change makes a new one


class Pool(Sequence[Example]):
    """The training examples few-shot prompting and retrieval may show (worked examples: a question and an answer),
    in input order; each is made from its cached record when it is asked for."""

    def __init__(self, examples: CachedExamples, numbers: np.ndarray, index_dir: Path | None):
        self.examples = examples
        self.numbers = numbers  # which examples of the source, in order
        self.index_dir = index_dir  # where the retriever keeps this pool's BM25 index

    def __len__(self) -> int:
        return len(self.numbers)

    @overload
    def __getitem__(self, i: int) -> Example: ...

    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...

    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return chat_of(self.examples[int(self.numbers[i])])


def eval_cases(config: Config, tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[list[Case], Pool]:
    """The cases (test set, validation set, or the held-out share of the training data) and the few-shot pool, from the
    data cache (prepared first when it is not there; `tokenizer`: the one training uses, loaded when not given)."""
    from trainer.data.pipeline import prepare_data

    if tokenizer is None:
        from trainer.models import load_tokenizer

        tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer, stop_on_problems=False)  # evaluation reads the valid examples, as it always has
    train = data.source_examples(0)
    held = np.zeros(len(train), dtype=bool)
    examples: Iterable[Example | Pair]
    if config.evaluation.test:  # conversations ending with the reference answer, whatever the objective
        examples = test_examples(config)
    elif config.data.validation:
        examples = data.source_examples(1)
    else:
        held[held_out(len(train), config.data.validation_split, config.training.seed)] = True
        examples = (train[int(i)] for i in np.flatnonzero(held))
    assert data.folder is not None
    index_dir = data.folder / f"bm25-v{INDEX_VERSION}-{'without-held-out' if held.any() else 'all'}"
    pool = Pool(train, np.flatnonzero(~held & (train.turns >= 2)), index_dir)
    return cases_of(examples, config.evaluation.max_examples), pool


def test_examples(config: Config) -> list[Example | Pair]:
    """evaluation.test's conversations ending with the reference answer, read as chats whatever the objective."""
    from trainer.data.pipeline import load_examples

    chats = config.replace(training=config.training.replace(objective="sft"), data=config.data.replace(format="auto"))
    return load_examples(config.evaluation.test, chats)[0]  # type: ignore[arg-type]  # evaluation.test is set


def cases_of(examples: Iterable[Example | Pair], most: int | None) -> list[Case]:
    # preference pairs: their prompts, with the chosen answer as the reference (and as the few-shot examples)
    found = (to_case(chat) for chat in map(chat_of, examples) if chat.messages)
    cases = list(itertools.islice((c for c in found if c is not None), most))
    if not cases:
        raise UserError("evaluation: there are no chat examples ending in an assistant answer to evaluate on; set evaluation.test.")
    return cases


def prompt_cases(config: Config) -> list[Case]:
    """grpo's cases, each with its record as the item: evaluation.test's prompts (or its chats ending with a reference
    answer, read as for any objective), else the validation prompts (data.validation or the held-out share)."""
    from trainer.data.prompts import read_prompt_source, read_prompts

    e = config.evaluation
    if e.test and not holds_prompts(e.test, config):
        return with_items(cases_of(test_examples(config), e.max_examples), config)
    prompts = read_prompt_source(e.test, config, [])[0] if e.test else read_prompts(config, []).validation
    if not prompts:
        raise UserError("evaluation: a grpo run is evaluated on prompts it did not train on, and there are none; set evaluation.test "
                        "(prompts with the fields its graders read, or chats ending with a reference answer), data.validation, "
                        "or data.validation_split above 0.")
    return [Case(tuple(message_dict(m) for m in p.messages), None, p.file, p.line, p.tools, p.messages, p.item) for p in prompts[:e.max_examples]]


def holds_prompts(ref: str, config: Config) -> bool:
    """Whether a data source's first record is a grpo prompt (a conversation ending with the user's turn, or TRL's
    prompt-only layout) rather than a conversation ending with its answer."""
    from trainer.data.prompts import MESSAGES_NAMES, prompt_layout
    from trainer.data.records import read_records

    records = read_records(ref)[0]
    if not records:
        return False
    columns = config.data.columns
    names = {"messages": columns.messages or "messages", "prompt": columns.prompt or "prompt", "system": MESSAGES_NAMES["system"]}
    row = records[0].row
    layout = prompt_layout(row, names)
    if layout == "openai":
        turns = row[names["messages"]]
        return isinstance(turns[-1], dict) and turns[-1].get("role") == "user"
    return layout == "trl"


def with_items(cases: list[Case], config: Config) -> list[Case]:
    """The cases with the item a grader sees: the record each came from (read again: the data cache keeps the
    conversation, not the record) and `reference`, the final answer's text (a field of that name in the record wins)."""
    from trainer.data.records import read_records

    source = config.evaluation.test or config.data.validation or config.data.train
    rows = {(r.file, r.line): r.row for r in read_records(source)[0]}
    return [replace(c, item={"reference": c.reference, **rows.get((c.file, c.line), {})}) for c in cases]


def chat_of(example: Example | Pair) -> Example:
    return example.chosen if isinstance(example, Pair) else example
