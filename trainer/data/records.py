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
from typing import Any

from trainer.config.rules import DATA_SUFFIXES, is_local_data
from trainer.errors import Problem, UserError


@dataclass(frozen=True)
class Record:
    row: dict
    file: str
    line: int  # 1-based line in the file (jsonl/json/csv) or row number (parquet, Hub)

    def problem(self, message: str) -> Problem:
        return Problem(message, "", self.file, self.line)


def read_records(ref: str) -> tuple[list[Record], list[Problem]]:
    """All records of a file, folder or Hub data set, and the problems of the ones that could not be read."""
    if not is_local_data(ref):
        return read_hub_dataset(ref), []
    path = Path(os.path.expanduser(ref))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise UserError(f"{ref}: the folder has no .jsonl, .json, .csv or .parquet files.")
    elif path.exists():
        files = [path]
    else:
        raise UserError(f"{ref}: no such data file or folder (relative paths start from {os.getcwd()}).")
    records: list[Record] = []
    problems: list[Problem] = []
    for file in files:
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}.get(file.suffix.lower())
        if reader is None:
            raise UserError(f"{file}: unknown data file type {file.suffix!r}; use .jsonl, .json, .csv or .parquet.")
        found, bad = reader(file)
        records += found
        problems += bad
    return records, problems


def _read_jsonl(path: Path) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    name = str(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark some editors write
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(Problem(f"the line is not UTF-8 text (byte {exc.start}); save the file as UTF-8.", "", name, number))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                if exc.pos >= len(text.rstrip("\r\n")):
                    what = "the line ends before the JSON object is complete (in a .jsonl file each example is one line)"
                else:
                    what = f"{exc.msg} at column {exc.pos + 1}"
                problems.append(Problem(f"invalid JSON: {what}.", "", name, number))
                continue
            if not isinstance(value, dict):
                problems.append(Problem(f"each line must be a JSON object ({{...}}), not {_kind(value)}.", "", name, number))
                continue
            records.append(Record(value, name, number))
    return records, problems


def _read_json(path: Path) -> tuple[list[Record], list[Problem]]:
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


def _read_csv(path: Path) -> tuple[list[Record], list[Problem]]:
    name = str(path)
    records, problems = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            line = 1
            for row in reader:
                line_of_row = line + 1
                line = reader.line_num
                if None in row:
                    problems.append(Problem("the row has more fields than the header; quote fields that contain commas.", "", name, line_of_row))
                    continue
                records.append(Record({k: _csv_value(v) for k, v in row.items()}, name, line_of_row))
    except UnicodeDecodeError as exc:
        raise UserError(f"{name}: the file is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    except csv.Error as exc:
        raise UserError(f"{name}: not a readable CSV file ({exc}).") from None
    return records, problems


def _csv_value(value: str | None) -> Any:
    """CSV cells are text; a cell holding a JSON list (a messages column) is read as that list."""
    if value is not None and value[:1] == "[" and value.rstrip()[-1:] == "]":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> tuple[list[Record], list[Problem]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a broken file
        raise UserError(f"{path}: not a readable Parquet file ({exc}).") from None
    return [Record(_clean(row), str(path), i + 1) for i, row in enumerate(table.to_pylist())], []


def read_hub_dataset(ref: str) -> list[Record]:
    """`org/name` or `org/name:split` through the datasets library (the default split is train)."""
    repo_id, _, split = ref.partition(":")
    try:
        import datasets

        dataset = datasets.load_dataset(repo_id, split=split or "train")
    except Exception as exc:  # datasets raises many types (connection, offline, not found, gated)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in reason.lower() or "connect" in reason.lower()
        where = "The Hugging Face Hub cannot be reached from here. " if offline else ""
        raise UserError(
            f"could not load the Hub data set {repo_id!r} (split {split or 'train'!r}): {reason}. {where}"
            "Download it where there is internet (e.g. datasets.load_dataset(...).to_json('train.jsonl')) "
            "and point data.train at the local .jsonl or .parquet file."
        ) from None
    return [Record(_clean(row), f"{repo_id}:{split or 'train'}", i + 1) for i, row in enumerate(dataset)]


def _clean(row: dict) -> dict:
    """Parquet and Hub rows can hold NaN for empty cells; treat those as missing."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number", bool: "true/false", type(None): "null"}.get(type(value), type(value).__name__)
