"""Reading raw records from .jsonl/.json/.csv/.parquet files, folders of them, or Hub data sets.

Every record remembers where it came from (file and line, or row), so every
problem found later can point at it. A broken line is a problem, not a crash.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

from trainer.config.rules import DATA_SUFFIXES, is_local_data
from trainer.errors import Problem, UserError


@dataclass(frozen=True)
class Record:
    row: dict
    file: str
    line: int  # 1-based line in the file (jsonl/json/csv) or row number (parquet, Hub)

    def problem(self, message: str) -> Problem:
        return Problem(message, "", self.file, self.line)


def data_files(ref: str) -> list[Path]:
    """The local files a data reference names: the file itself, or a folder's data files (shards) in name order."""
    path = Path(os.path.expanduser(ref))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise UserError(f"{ref}: the folder has no .jsonl, .json, .csv or .parquet files.")
    elif path.exists():
        files = [path]
    else:
        raise UserError(f"{ref}: no such data file or folder (relative paths start from {os.getcwd()}).")
    for file in files:
        if file.suffix.lower() not in READERS:
            raise UserError(f"{file}: unknown data file type {file.suffix!r}; use .jsonl, .json, .csv or .parquet.")
    return files


def read_records(ref: str) -> tuple[list[Record], list[Problem]]:
    """All records of a file, folder or Hub data set, and the problems of the ones that could not be read."""
    records: list[Record] = []
    problems: list[Problem] = []
    for item in iter_items(ref):
        found = parse_item(item)
        if isinstance(found, Record):
            records.append(found)
        elif found is not None:
            problems.append(found)
    return records, problems


# An item is a Record, a Problem, or a JSON Lines line not parsed yet (parse_item parses it, in a worker process
# when there are many): reading stays a stream whatever the size of the file.
RawLine = tuple[str, int, bytes]
Item = Union[Record, Problem, RawLine]


def iter_items(ref: str) -> Iterator[Item]:
    """The items of a file, folder or Hub data set, in order, one at a time (never the whole file in memory,
    except a .json array, which is one JSON value)."""
    if not is_local_data(ref):
        yield from iter_hub_dataset(ref)
        return
    for file in data_files(ref):
        yield from READERS[file.suffix.lower()](file)


def parse_item(item: Item) -> Record | Problem | None:
    """A Record, the Problem of an unreadable line, or None for a blank line."""
    if isinstance(item, tuple):
        return _parse_jsonl_line(*item)
    return item


def _read_jsonl(path: Path) -> Iterator[Item]:
    name = str(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark some editors write
            yield name, number, raw


def _parse_jsonl_line(name: str, number: int, raw: bytes) -> Record | Problem | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(f"the line is not UTF-8 text (byte {exc.start}); save the file as UTF-8.", "", name, number)
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip("\r\n")):
            what = "the line ends before the JSON object is complete (in a .jsonl file each example is one line)"
        else:
            what = f"{exc.msg} at column {exc.pos + 1}"
        return Problem(f"invalid JSON: {what}.", "", name, number)
    if not isinstance(value, dict):
        return Problem(f"each line must be a JSON object ({{...}}), not {_kind(value)}.", "", name, number)
    return Record(value, name, number)


def _read_json(path: Path) -> Iterator[Item]:
    records, problems = _json_array(path)
    yield from problems
    yield from records


def _json_array(path: Path) -> tuple[list[Record], list[Problem]]:
    """A JSON array of objects (or an object with one list of them). Line numbers come from each element's offset."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{name}: the file is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    decoder = json.JSONDecoder()
    try:
        start = len(text) - len(text.lstrip())
        if text[start:start + 1] == "{":
            value = json.loads(text)
            lists = [v for v in value.values() if isinstance(v, list)] if isinstance(value, dict) else []
            if len(lists) != 1:
                raise UserError(f"{name}: expected a JSON list of examples ([{{...}}, {{...}}]), or JSON Lines in a .jsonl file.")
            rows = lists[0]
            bad = [Problem(f"example {i + 1} must be a JSON object ({{...}}), not {_kind(r)}.", "", name) for i, r in enumerate(rows) if not isinstance(r, dict)]
            return [Record(r, name, i + 1) for i, r in enumerate(rows) if isinstance(r, dict)], bad
        if text[start:start + 1] != "[":
            raise UserError(f"{name}: expected a JSON list of examples ([{{...}}, {{...}}]); for one object per line, name the file .jsonl.")
        records, problems = [], []
        pos = start + 1
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] == "]":
                break
            value, end = decoder.raw_decode(text, pos)
            line = text.count("\n", 0, pos) + 1
            if isinstance(value, dict):
                records.append(Record(value, name, line))
            else:
                problems.append(Problem(f"each example must be a JSON object ({{...}}), not {_kind(value)}.", "", name, line))
            pos = end
        return records, problems
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}:{exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}.") from None


def _read_csv(path: Path) -> Iterator[Item]:
    name = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            line = 1
            for row in reader:
                line_of_row = line + 1
                line = reader.line_num
                if None in row:
                    yield Problem("the row has more fields than the header; quote fields that contain commas.", "", name, line_of_row)
                    continue
                yield Record({k: _csv_value(v) for k, v in row.items()}, name, line_of_row)
    except UnicodeDecodeError as exc:
        raise UserError(f"{name}: the file is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    except csv.Error as exc:
        raise UserError(f"{name}: not a readable CSV file ({exc}).") from None


def _csv_value(value: str | None) -> Any:
    """CSV cells are text; a cell holding a JSON list (a messages column) is read as that list."""
    if value is not None and value[:1] == "[" and value.rstrip()[-1:] == "]":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> Iterator[Item]:
    """Row groups one batch at a time (pyarrow's iter_batches), so a file of many GB is never whole in memory."""
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield Record(_clean(row), str(path), number)
    except OSError as exc:  # pyarrow's ArrowInvalid and ArrowIOError are OSErrors; a broken file can fail at any batch
        raise UserError(f"{path}: not a readable Parquet file ({exc}).") from None


PARQUET_BATCH = 4096


def read_hub_dataset(ref: str) -> list[Record]:
    """`org/name` or `org/name:split` through the datasets library (the default split is train), all rows."""
    return [item for item in iter_hub_dataset(ref) if isinstance(item, Record)]


def iter_hub_dataset(ref: str) -> Iterator[Record]:
    """A Hub data set streamed row by row (datasets' streaming=True): nothing is downloaded whole, so a data set
    bigger than the disk can be prepared; only its tokenized form is kept (in the data cache)."""
    repo_id, _, split = ref.partition(":")
    where = f"{repo_id}:{split or 'train'}"
    try:
        import datasets

        dataset = datasets.load_dataset(repo_id, split=split or "train", streaming=True)
        for i, row in enumerate(dataset):
            yield Record(_clean(row), where, i + 1)
    except Exception as exc:  # datasets raises many types (connection, offline, not found, gated), also while streaming
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in reason.lower() or "connect" in reason.lower()
        hint = "The Hugging Face Hub cannot be reached from here. " if offline else ""
        raise UserError(
            f"could not load the Hub data set {repo_id!r} (split {split or 'train'!r}): {reason}. {hint}"
            "Download it where there is internet (e.g. datasets.load_dataset(...).to_json('train.jsonl')) "
            "and point data.train at the local .jsonl or .parquet file."
        ) from None


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _clean(row: dict) -> dict:
    """Parquet and Hub rows can hold NaN for empty cells; treat those as missing."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number", bool: "true/false", type(None): "null"}.get(type(value), type(value).__name__)
