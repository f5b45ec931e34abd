"""Tokenized examples on disk, memory-mapped: an Arrow IPC stream of record batches, written batch by batch and
read without copying, so training holds the lengths column and the batches in use, never the whole data.

The store is a dict of columns: sequence columns (input_ids, labels; a preference pair would add chosen_ids,
rejected_ids) are Arrow list<int32> columns, per-example numbers are int32/int64 columns, text is a string column.
The file is in the stream format `datasets.Dataset.from_file` reads, so the cache can also be opened with
Hugging Face datasets (e.g. to look at it: `datasets.Dataset.from_file(".../rows.arrow")`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from trainer.data.tokenize import Tokenized

Columns = dict[str, Any]  # name -> list of numpy arrays (a sequence column), numbers, or strings


def _arrow(values: Any) -> Any:
    import pyarrow as pa

    if isinstance(values, np.ndarray):  # a number per example, in the array's type (int32 for counts)
        return pa.array(values)
    if values and isinstance(values[0], np.ndarray):  # one array per example: a list<int32> column
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(values).astype(np.int32, copy=False) if len(values) else np.zeros(0, np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.array(values)


class StoreWriter:
    """Writes batches of columns to one Arrow stream file; every batch must have the same columns."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0
        self._sink: Any = None
        self._writer: Any = None

    def write(self, columns: Columns) -> None:
        import pyarrow as pa

        names = list(columns)
        if not names or not len(columns[names[0]]):
            return
        batch = pa.record_batch([_arrow(columns[n]) for n in names], names=names)
        if self._writer is None:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, batch.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self, empty_columns: Sequence[str] = ()) -> None:
        """Finish the file; with no rows written, an empty file of `empty_columns` (int32) is written."""
        import pyarrow as pa

        if self._writer is None:
            schema = pa.schema([(name, pa.int32()) for name in empty_columns])
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, schema)
        self._writer.close()
        self._sink.close()


class Store:
    """The memory-mapped rows of a store file: columns as numpy arrays, sequences as zero-copy views."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = path
        self.table = pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()
        self._sequences: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._starts = np.cumsum([0] + [len(c) for c in self.table.column(0).chunks]) if self.table.num_columns else np.zeros(1, np.int64)

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    def numbers(self, name: str) -> np.ndarray:
        """A per-row number column as one numpy array (copied once from the map, then kept)."""
        if name not in self._numbers:
            self._numbers[name] = self.table.column(name).to_numpy()
        return self._numbers[name]

    def text(self, name: str, row: int) -> str:
        return str(self.table.column(name)[row].as_py())

    def sequence(self, name: str, row: int) -> np.ndarray:
        """Row `row` of a list<int32> column: a read-only view into the mapped file."""
        if name not in self._sequences:
            chunks = self.table.column(name).chunks
            self._sequences[name] = ([c.values.to_numpy(zero_copy_only=True) for c in chunks],
                                     [np.asarray(c.offsets) for c in chunks])
        values, offsets = self._sequences[name]
        k = int(np.searchsorted(self._starts, row, side="right")) - 1
        j = row - int(self._starts[k])
        return values[k][offsets[k][j] : offsets[k][j + 1]]


class Rows(Sequence[Tokenized]):
    """The examples of one split: rows of a Store, by index. What training, evaluation and the report read."""

    def __init__(self, store: Store, indices: np.ndarray):
        self.store = store
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row = int(self.indices[i])
        s = self.store
        # tuples, as Tokenized has always held (a batch's worth at a time: the split itself stays in the map)
        return Tokenized(tuple(s.sequence("input_ids", row).tolist()), tuple(s.sequence("labels", row).tolist()), s.text("file", row),
                         int(s.numbers("line")[row]),
                         int(s.numbers("full_length")[row]), int(s.numbers("trained_lost")[row]), int(s.numbers("reasoning_dropped")[row]))

    def __iter__(self) -> Iterator[Tokenized]:
        return (self[i] for i in range(len(self)))

    def column(self, name: str) -> np.ndarray:
        """A per-example column of this split (lengths, trained tokens, ...), in the split's order."""
        return self.store.numbers(name)[self.indices]

    @property
    def lengths(self) -> np.ndarray:
        return self.column("length")

    def sides(self) -> Rows:
        """Every tokenized sequence of the split: the examples themselves (both sides of each pair for PairRows)."""
        return self


class PairRows(Rows):
    """The preference pairs of one split: each is two rows of the store, its chosen side then its rejected side;
    `indices` lists the chosen rows. A pair's length is its longer side's (the row it needs in a batch)."""

    def __getitem__(self, i: Any) -> Any:
        from trainer.data.preference import TokenizedPair

        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        position = i + len(self) if i < 0 else i
        row = int(self.indices[position])
        one = Rows(self.store, np.asarray([row, row + 1]))
        return TokenizedPair(one[0], one[1], position)

    @property
    def lengths(self) -> np.ndarray:
        length = self.store.numbers("length")
        return np.maximum(length[self.indices], length[np.asarray(self.indices) + 1])

    def sides(self) -> Rows:
        both = np.empty(2 * len(self.indices), dtype=np.int64)
        both[0::2], both[1::2] = self.indices, np.asarray(self.indices) + 1
        return Rows(self.store, both)
