"""What an evaluation runs on: its cases, and the training examples few-shot prompting and retrieval draw from.

Both come from the data cache (data/cache.py), prepared as training prepares them when the entry is not there yet:
the cases are the examples of the validation file or of the held-out share (the same share training held out), or of
evaluation.test; the pool is the training examples with a question and an answer (the chosen side of preference
pairs), in input order. The pool is a Sequence that makes each example from its cached record when it is asked
for, so few-shot prompting and retrieval touch a handful of them, and the BM25 index of the pool is kept beside the
cache entry (bm25-*/), so a second evaluation maps it instead of indexing the training data again.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from trainer.config import Config
from trainer.data.build import held_out
from trainer.data.examples import CachedExamples
from trainer.data.formats import Example
from trainer.data.preference import Pair
from trainer.errors import UserError
from trainer.evaluation.prompts import Case, to_case

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


def eval_cases(config: Config, tokenizer: Any = None) -> tuple[list[Case], Pool]:
    """The cases (test set, validation set, or the held-out share of the training data) and the few-shot pool, from the
    data cache (prepared first when it is not there; `tokenizer`: the one training uses, loaded when not given)."""
    from trainer.data.pipeline import load_examples, prepare_data

    if tokenizer is None:
        from trainer.models import load_tokenizer

        tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer, stop_on_problems=False)  # evaluation reads the valid examples, as it always has
    train = data.source_examples(0)
    held = np.zeros(len(train), dtype=bool)
    examples: Iterable[Example | Pair]
    if config.evaluation.test:  # conversations ending with the reference answer, whatever the objective
        chats = config.replace(training=config.training.replace(objective="sft"), data=config.data.replace(format="auto"))
        examples = load_examples(config.evaluation.test, chats)[0]
    elif config.data.validation:
        examples = data.source_examples(1)
    else:
        held[held_out(len(train), config.data.validation_split, config.training.seed)] = True
        examples = (train[int(i)] for i in np.flatnonzero(held))
    assert data.folder is not None
    index_dir = data.folder / f"bm25-v{INDEX_VERSION}-{'without-held-out' if held.any() else 'all'}"
    pool = Pool(train, np.flatnonzero(~held & (train.turns >= 2)), index_dir)
    # preference pairs: their prompts, with the chosen answer as the reference (and as the few-shot examples)
    found = (to_case(chat) for chat in map(chat_of, examples) if chat.messages)
    cases = list(itertools.islice((c for c in found if c is not None), config.evaluation.max_examples))
    if not cases:
        raise UserError("evaluation: there are no chat examples ending in an assistant answer to evaluate on; set evaluation.test.")
    return cases, pool


def chat_of(example: Example | Pair) -> Example:
    return example.chosen if isinstance(example, Pair) else example
