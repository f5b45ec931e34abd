"""The examples behind a cache entry, as the data holds them: examples.arrow keeps every valid example's record as it
was read (build.py), so evaluation (its cases, few-shot and retrieval pools) and `trainer data --show` turn a
record back into its Example (or Pair) on access, by the same code as the first reading, without the data files.

One record costs about its size in the data file (a JSON Lines line is kept as it is); the records are memory-mapped,
so holding a source of a million examples costs its per-example numbers (line, turns), not its conversations.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import overload

import numpy as np

from trainer.data.formats import Example
from trainer.data.preference import Pair
from trainer.data.prepare import convert
from trainer.data.records import Record
from trainer.data.store import Store


class CachedExamples(Sequence[Example | Pair]):
    """The valid examples of one source (0: data.train, 1: data.validation) in input order, each made again from its
    record when it is asked for; `turns` says how many non-system turns each has without making any."""

    def __init__(self, store: Store, source: int, fmt: str, names: dict, train_on: str):
        self.store = store
        self.rows = np.flatnonzero(store.numbers("source") == source) if len(store) else np.zeros(0, np.int64)
        self.fmt, self.names, self.train_on = fmt, names, train_on

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Example | Pair: ...

    @overload
    def __getitem__(self, i: slice) -> list[Example | Pair]: ...

    def __getitem__(self, i: int | slice) -> Example | Pair | list[Example | Pair]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row = int(self.rows[i])
        record = Record(json.loads(self.store.text("record", row)), self.store.text("file", row), int(self.store.numbers("line")[row]))
        example, problems = convert(record, self.fmt, self.names, self.train_on)
        assert example is not None, f"{record.file}:{record.line} was a valid example when it was cached: {problems}"
        return example

    @property
    def turns(self) -> np.ndarray:
        """Per example, its conversation's turns other than system ones (a pair's chosen conversation; 0 for text)."""
        return self.store.numbers("turns")[self.rows]
