"""What runs measured on this machine, kept for the next run's estimate (`trainer plan`, `trainer data`).

<cache>/throughput.json keeps the recent measurements of each configuration (`throughput_key`), not only the last:

- the training throughput: the trained tokens over the seconds of the training loop, pooled over the kept runs
  (sum of tokens / sum of seconds): each run weighs as much as it trained, and the rate is what those runs did
  together;
- the time a run spends besides its loop, `<key>|overhead_seconds` (loading the model and the data, saving) and
  `<key>|evaluation_seconds` (the evaluation after training): a cost per run, so the median of the kept runs'.

A run of fewer than MIN_STEPS optimizer steps is dominated by start-up: its first step sets up the kernels and
the optimizer's state, and its last evaluates and checkpoints, one-off costs that each take as long as a few steps
and that a longer run spreads thin. Such a short run's measurements count only while its configuration has none from
a longer run, and a short one is the first to go when the history is full: a 4-step trial no longer replaces what a
full run measured (issue 32: one 4-step run recorded 0.66 tokens/s and took a preset's plan from 19.9 to 376 min).

An older trainer kept one number per key, the last run's; such a file is read as it is (`earlier`), and the first
measurement written converts it, keeping the old numbers where a measurement of their key has not replaced them.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from trainer.config import Config

VERSION = 2
KEEP = 5  # measurements kept per key: recent enough to follow a changed machine, enough to average out a slow one
MIN_STEPS = 20  # fewer optimizer steps: the run's one-off start-up and final costs dominate its time


def throughput_file() -> str:
    from trainer.demo import cache_dir

    return str(cache_dir() / "throughput.json")


def throughput_key(config: Config) -> str:
    """model|method|device|max length|batch <micro-batch>, and |checkpointing when activations are recomputed (a
    second forward pass). The micro-batch changes the tokens a step processes at once, so the tokens per second too."""
    key = (f"{os.path.basename(config.model.name_or_path)}|{config.training.method}|{config.backend.peft.device}"
           f"|{config.data.max_seq_length}|batch {config.training.batch_size}")
    return key + ("|checkpointing" if config.training.gradient_checkpointing else "")


class KeyParts(NamedTuple):
    """The fields of a throughput key; batch is None in a key an older trainer wrote (it kept no micro-batch)."""

    model: str
    method: str
    device: str
    length: str
    batch: int | None
    checkpointing: bool


def key_parts(key: str) -> KeyParts:
    name, method, device, length, *rest = key.split("|") + ["", "", "", ""]
    batch = next((int(part.split()[1]) for part in rest if part.startswith("batch ")), None)
    return KeyParts(name, method, device, length, batch, "checkpointing" in rest)


@dataclass(frozen=True)
class Measurement:
    """One run's measurement: of its training loop, or of one part of the run besides it (`seconds` is then that
    part's, and `steps` and `tokens` say how long the run's training was)."""

    seconds: float
    steps: int  # optimizer steps the run took
    tokens: int  # tokens it trained
    resumed_at_step: int | None = None  # the checkpoint a resumed run continued from (its seconds and tokens count from the start)
    at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def short(self) -> bool:
        return self.steps < MIN_STEPS


@dataclass
class History:
    measurements: dict[str, list[Measurement]]
    earlier: dict[str, float]  # what an older trainer kept: the last run's tokens/s (or seconds) of each key


def counted(runs: list[Measurement]) -> list[Measurement]:
    """The measurements an estimate uses: those of runs long enough to measure more than start-up, or, while there
    are none, the short ones."""
    return [m for m in runs if not m.short] or runs


def tokens_per_second(runs: list[Measurement]) -> float | None:
    used = counted(runs)
    seconds = sum(m.seconds for m in used)
    return sum(m.tokens for m in used) / seconds if seconds > 0 else None


def typical_seconds(runs: list[Measurement]) -> float | None:
    used = counted(runs)
    return statistics.median(m.seconds for m in used) if used else None


def kept(runs: list[Measurement]) -> list[Measurement]:
    """The newest KEEP measurements, a short run's going first: short trials do not push out what long runs measured."""
    runs = list(runs)
    while len(runs) > KEEP:
        runs.remove(next((m for m in runs if m.short), runs[0]))
    return runs


def read_history() -> History:
    try:
        data = json.loads(Path(throughput_file()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return History({}, {})
    if not isinstance(data, dict):
        return History({}, {})
    # an older trainer's file is key -> number, and an older trainer writing to this version's file adds such keys
    earlier = {k: float(v) for k, v in data.items() if k != "version" and isinstance(v, (int, float))}
    saved_earlier, saved_measurements = data.get("earlier"), data.get("measurements")
    if isinstance(saved_earlier, dict):
        earlier.update({k: float(v) for k, v in saved_earlier.items() if isinstance(v, (int, float))})
    measurements = {}
    for key, runs in (saved_measurements.items() if isinstance(saved_measurements, dict) else []):
        try:
            measurements[key] = [Measurement(**run) for run in runs]
        except TypeError:  # not this version's fields: skip the key rather than fail the run that records
            continue
    return History(measurements, earlier)


def record(key: str, measurement: Measurement) -> None:
    """Add a run's measurement to its key's history (and convert an older trainer's file)."""
    history = read_history()
    history.measurements[key] = kept([*history.measurements.get(key, []), measurement])
    table = {"version": VERSION, "earlier": history.earlier,
             "measurements": {k: [asdict(m) for m in runs] for k, runs in history.measurements.items()}}
    path = Path(throughput_file())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def estimates() -> dict[str, float]:
    """What each key's history says: tokens/s for a configuration, seconds for its `|<part>_seconds` key; an older
    trainer's number where this version has measured nothing of that key yet."""
    history = read_history()
    values = dict(history.earlier)
    for key, runs in history.measurements.items():
        value = typical_seconds(runs) if key.endswith("_seconds") else tokens_per_second(runs)
        if value:
            values[key] = value
    return values
