"""The data cache: tokenized data kept on disk, keyed by everything that changes it, and `trainer cache list|clear`.

An entry is a folder $TRAINER_CACHE/data/<key>/ (default ~/.cache/trainer/data) holding rows.arrow (store.py),
examples.arrow (each valid example's record, for evaluation: build.py), train.npy and validation.npy (which rows
each split has) and meta.json (the reports, written last); evaluation adds its BM25 index (bm25-*/) the first time it
needs it. The key is a hash of: the data files' content (and their names, which problems quote), the tokenizer
(its vocabulary, merges and special tokens) and the chat template (with data.template_date's clock pinned in it, for a
template that writes today's date: so an entry never goes stale by the day, and a date is in the key only where a
template shows it), the data settings that change the rows, the seed
that picks the held-out validation share, trainer's version and the entry's layout (LAYOUT). data.num_workers, data.packing and data.on_invalid
change nothing in the rows, so they are not in it.

An entry is built in a temporary folder (.tmp-<key>-<pid>) and renamed into place when complete: a preparation
killed half way leaves only a temporary folder, which is never read and is removed by the next preparation
(once its process is gone) or by `trainer cache clear`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from trainer import __version__, childproc
from trainer.config.rules import is_local_data
from trainer.config.sections import DataConfig

KEYED_SETTINGS = ("train", "validation", "validation_split", "format", "columns", "chat_template", "turns", "system_prompt", "tool_call_ids",
                  "template_kwargs", "max_seq_length", "train_on")
LAYOUT = 2  # what an entry holds; 2: examples.arrow added (entries without it are not used)
_READ = 1 << 20
MEMO_FILES = 2000
RACY_NS = 3 * 10**9  # git's "racily clean" rule: a content hash is remembered only for files older than this


def cache_root() -> Path:
    from trainer.demo import cache_dir

    return cache_dir() / "data"


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 of the content, number of lines), read in 1 MiB blocks; remembered by (path, size, mtime, inode),
    as make and git do, so a file that has not changed is not read again."""
    stat = path.stat()
    memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    memo_file = cache_root() / "digests.json"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if memo_key in memo:
        digest, lines = memo[memo_key]
        return str(digest), int(lines)
    sha, lines = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(_READ):
            sha.update(block)
            lines += block.count(b"\n")
    if time.time_ns() - stat.st_mtime_ns > RACY_NS:  # a file changed this recently could change again within the same mtime
        memo = {k: v for k, v in memo.items() if not k.startswith(f"{path.resolve()}|")}
        memo = dict(list(memo.items())[-MEMO_FILES:])  # the files hashed last
        memo[memo_key] = [sha.hexdigest(), lines]
        _write_atomically(memo_file, json.dumps(memo))
    return sha.hexdigest(), lines


def data_identity(ref: str | None) -> tuple[list, int | None]:
    """What identifies a data reference: each file's name and content hash (a Hub data set: its name only), and
    the number of lines (for the progress bar; None for the Hub)."""
    from trainer.data.records import data_files

    if ref is None:
        return [], 0
    if not is_local_data(ref):  # streamed, so its content is unknown until read; `trainer cache clear` after it changes
        return [["hub", ref]], None
    parts, total = [], 0
    for file in data_files(ref):
        digest, lines = file_digest(file)
        parts.append([str(file), digest])
        total += _parquet_rows(file) if file.suffix.lower() == ".parquet" else lines
    return parts, total


def _parquet_rows(file: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(file).metadata.num_rows)
    except OSError:
        return 0


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of the tokenizer: its serialised form (vocabulary, merges, normaliser, added tokens) and special tokens."""
    sha = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        sha.update(backend.to_str().encode())
    else:  # a slow (Python) tokenizer
        sha.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    sha.update(json.dumps([str(tokenizer.special_tokens_map), tokenizer.eos_token_id, tokenizer.pad_token_id], default=str).encode())
    return sha.hexdigest()


def cache_key(data: DataConfig, seed: int, tokenizer: Any, template_jinja: str | None, model_label: str) -> tuple[str, dict]:
    """The entry's key and what it was made of (kept in meta.json, shown by `trainer cache list`); `seed`: training.seed."""
    settings = {k: v for k, v in data.to_dict().items() if k in KEYED_SETTINGS}
    train, lines = data_identity(data.train)
    validation, more = data_identity(data.validation)
    inputs = {
        "trainer": __version__,
        "layout": LAYOUT,
        "data": settings,
        "seed": seed,
        "train_files": train,
        "validation_files": validation,
        "tokenizer": tokenizer_identity(tokenizer),
        "template": hashlib.sha256((template_jinja or "").encode()).hexdigest(),
        "model": model_label,  # messages name the model
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return key, dict(inputs, lines=None if lines is None or more is None else lines + more)


def entry_dir(key: str) -> Path:
    return cache_root() / key


def is_complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file() and (folder / "rows.arrow").is_file()


def new_temp_dir(key: str) -> Path:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned()
    folder = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def publish(temp: Path, key: str) -> Path:
    """Rename a finished temporary folder into place (atomic); another process that finished first wins."""
    final = entry_dir(key)
    try:
        os.rename(temp, final)
    except OSError:
        if not is_complete(final):
            raise
        shutil.rmtree(temp, ignore_errors=True)
    return final


def remove_abandoned() -> int:
    """Remove the temporary folders of preparations whose process is gone (killed half way)."""
    removed = 0
    for folder in cache_root().glob(".tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not childproc.alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def write_meta(folder: Path, meta: dict) -> None:
    _write_atomically(folder / "meta.json", json.dumps(meta))


def read_meta(folder: Path) -> dict:
    return dict(json.loads((folder / "meta.json").read_text(encoding="utf-8")))


# ---- trainer cache list | clear -----------------------------------------------------------------------------------

def add_cache_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="list or free the data cache (tokenized data kept between runs)",
                       description="Tokenized data is kept in $TRAINER_CACHE/data (default ~/.cache/trainer/data) so that a second run, "
                                   "--resume, `trainer data` and `trainer eval` start in seconds. `list` shows the entries, `clear` removes them.")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("keys", nargs="*", metavar="KEY", help="clear: only these entries (default: all)")


def cache_command(args: argparse.Namespace) -> int:
    root = cache_root()
    entries = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if args.action == "list":
        print(f"{root}: {len([e for e in entries if not e.name.startswith('.')])} entr(ies), {_size(entries) / 2**20:.1f} MiB")
        for entry in entries:
            print("  " + _describe(entry))
        return 0
    chosen = [e for e in entries if not args.keys or e.name in args.keys]
    freed = _size(chosen)
    for entry in chosen:
        shutil.rmtree(entry, ignore_errors=True)
    print(f"removed {len(chosen)} entr(ies) from {root}, {freed / 2**20:.1f} MiB freed")
    return 0


def _size(folders: list[Path]) -> int:
    return sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())


def _describe(entry: Path) -> str:
    size = f"{_size([entry]) / 2**20:8.1f} MiB"
    if entry.name.startswith(".tmp-") or not is_complete(entry):
        return f"{entry.name}  {size}  incomplete (a preparation that was stopped or is running)"
    meta = read_meta(entry)
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("created", 0)))
    inputs = meta.get("inputs", {})
    files = ", ".join(f[-1] if f[0] == "hub" else f[0] for f in inputs.get("train_files", []))
    return (f"{entry.name}  {size}  {made}  {meta.get('rows', 0)} rows  train: {files or '?'}  model: {inputs.get('model', '?')}  "
            f"max_seq_length {inputs.get('data', {}).get('max_seq_length', '?')}")
