"""What a reference names, told from its spelling: a Hub id or a local path; and dotted key paths into nested dicts.

One place for each pattern, so that the validator, the data reader, the AutoTrain
translation and the UI read a name the same way.
"""
from __future__ import annotations

import os
import re
from typing import Any

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")  # org/name, or org/name:split
HUB_MODEL = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name, or a bare name (gpt2)

MISSING: Any = object()  # get_path's default: tells a missing key from one set to None


def is_local_data(ref: str) -> bool:
    """A data reference is a local path unless it reads as a Hub id (org/name or org/name:split)."""
    path = os.path.expanduser(ref)
    return os.path.exists(path) or path.lower().endswith(DATA_SUFFIXES) or not HUB_DATASET.match(ref)


def is_local_model(ref: str) -> bool:
    path = os.path.expanduser(ref)
    return os.path.exists(path) or path.lower().endswith(".gguf") or ref.startswith((".", "/", "~")) or not HUB_MODEL.match(ref)


def key_path(key: str | tuple) -> tuple:
    """("training", "lora", "r") for "training.lora.r"; a tuple as it is."""
    return tuple(key.split(".")) if isinstance(key, str) else key


def get_path(data: Any, key: str | tuple, default: Any = None) -> Any:
    """The value at a dotted key ("training.lora.r") or key tuple in nested dicts, else `default`."""
    node = data
    for part in key_path(key):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_path(data: dict, key: str | tuple, value: Any) -> None:
    """Set the value at a dotted key or key tuple, creating the dicts on the way."""
    parts = key_path(key)
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value
