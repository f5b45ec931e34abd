"""What a run leaves behind: summary.json, metrics.jsonl, loss.png and the model card.

Both backends write these files through the classes and functions here, so a
metric has one name whichever backend trained.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import __version__
from trainer.config import Config
from trainer.errors import UserError
from trainer.methods import method_for

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

SUMMARY_FILE = "summary.json"


def _rounded(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None


@dataclass
class RunSummary:
    """summary.json: what a finished run did, the same names for every backend."""

    backend: str  # which backend trained (backend.name)
    steps: int  # optimizer steps taken
    epochs: float  # passes over the training data, with the fraction of the last
    final_train_loss: float | None  # per trained token, of the last step
    final_eval_loss: float | None  # on the validation set, at the end
    best_eval_loss: float | None
    best_step: int | None  # the step of best_eval_loss
    stopped_early: bool
    trained_tokens: int  # tokens in the loss, over the whole run
    train_seconds: float
    trained_tokens_per_second: float
    # The system prompt every training conversation started with (null: they differed, or some had none), kept here
    # because the training data may not be found again later: `trainer export --to ollama` writes it as SYSTEM.
    common_system_prompt: str | None = None
    finished_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self) -> None:
        self.epochs = round(self.epochs, 3)
        self.final_train_loss = _rounded(self.final_train_loss, 4)
        self.final_eval_loss = _rounded(self.final_eval_loss, 4)
        self.best_eval_loss = _rounded(self.best_eval_loss, 4)
        self.train_seconds = round(self.train_seconds, 1)
        self.trained_tokens_per_second = round(self.trained_tokens_per_second, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, run_dir: Path) -> None:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")

    @classmethod
    def read(cls, run_dir: Path) -> RunSummary | None:
        """The summary of a finished run, or None (no summary.json, or one written before `backend` was in it)."""
        try:
            return cls(**json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def common_system_prompt(examples: Iterable) -> str | None:
    """The system prompt every one of `examples` (Examples, or preference Pairs: their chosen side) starts with, or None."""
    found: set[str | None] = set()
    for example in examples:
        messages = getattr(example, "chosen", example).messages  # None for plain text
        found.add(messages[0].content if messages and messages[0].role == "system" else None)
        if len(found) > 1:
            return None
    return found.pop() if found else None


def eval_perplexity(eval_loss: float) -> float:
    """exp(loss per trained token), capped where it would overflow."""
    return math.exp(min(eval_loss, 50))


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step or evaluation, appended and flushed as it happens.

    With `tensorboard=True` the same numbers also go to TensorBoard event files in <run>/tensorboard.
    """

    def __init__(self, path: Path, resume_step: int | None, tensorboard: bool = False) -> None:
        self.path = path
        self.board = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(log_dir=str(path.parent / "tensorboard"), purge_step=resume_step)
        self.rows: list[dict] = []
        if resume_step is not None and path.exists():
            # entries written after the checkpoint we resume from belong to the lost part of the run
            self.rows = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("step", 0) <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, **row: Any) -> None:
        row = {"time": round(time.time(), 3), **row}
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.board is not None:
            for key, value in row.items():
                if key not in ("step", "time", "total_steps") and isinstance(value, (int, float)):
                    self.board.add_scalar(key if key.startswith("eval") else f"train/{key}", value, row["step"])
            self.board.flush()

    def write_eval(self, step: int, eval_loss: float) -> None:
        """A validation row: its loss per trained token and the perplexity from it."""
        self.write(step=step, eval_loss=eval_loss, eval_perplexity=eval_perplexity(eval_loss))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in self.rows if key in r]
        return [p[0] for p in points], [p[1] for p in points]


def guard_run_dir(run_dir: Path, resume: bool) -> None:
    """Clear what a killed save left, and refuse to overwrite an earlier run silently."""
    from trainer import checkpoint

    checkpoint.remove_partial_saves(run_dir)
    if resume:
        return
    if checkpoint.complete_checkpoints(run_dir) or (run_dir / "model").exists():
        raise UserError(
            f"output.dir {run_dir} already holds a run. Add --resume (or resume: auto) to continue it, "
            "or choose another output.dir (e.g. --set output.dir=runs/new) to start fresh."
        )


def write_merged(run_dir: Path, adapted_model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """<run>/merged: `adapted_model` (a peft model) with its adapter folded into the base weights."""
    merged = adapted_model.merge_and_unload()
    shutil.rmtree(run_dir / "merged", ignore_errors=True)
    merged.save_pretrained(run_dir / "merged")
    tokenizer.save_pretrained(run_dir / "merged")


def merge_saved_adapter(run_dir: Path) -> None:
    """<run>/merged from the adapter in <run>/model and a fresh copy of the base model, loaded on the CPU."""
    from trainer.generate import load_run

    loaded = load_run(run_dir, "cpu")
    write_merged(run_dir, loaded.model, loaded.tokenizer)


def plot_losses(history: list, metrics: MetricsLog, path: Path) -> None:
    """Training loss of every step (from the run's history) and each validation loss, into loss.png."""
    import matplotlib.pyplot as plt

    fig = loss_figure(([h[0] for h in history], [h[1] for h in history]), metrics.series("eval_loss"))
    fig.savefig(path)
    plt.close(fig)


def loss_figure(training: tuple[list, list], validation: tuple[list, list], rewards: dict[str, tuple[list, list]] | None = None) -> Figure:
    """The loss curves as a matplotlib Figure: (steps, losses) of training and of validation. Steps are whole
    numbers on the axis, and each validation loss is a marked point, so a single one shows. With `rewards` (a grpo
    run's mean reward per step, in all and per grader: {name: (steps, rewards)}), a second panel below shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2 if rewards else 1, 1, figsize=(7, 6.5 if rewards else 4), dpi=100, sharex=True, squeeze=False)
    ax = axes[0][0]
    if training[0]:
        ax.plot(*training, label="training loss", color="#1f77b4")
    if validation[0]:
        ax.plot(*validation, "o-", label="validation loss", color="#d62728")
    ax.set_ylabel("loss (per trained token)")
    if rewards:
        below = axes[1][0]
        for name, (steps, values) in rewards.items():
            below.plot(steps, values, "o-" if len(steps) == 1 else "-", label=name, linewidth=2 if name == "reward" else 1)
        below.set_ylabel("mean reward")
        below.grid(alpha=0.3)
        below.legend()
    for a in (row[0] for row in axes):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1][0].set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    if training[0] or validation[0]:
        ax.legend()
    fig.tight_layout()
    return fig


def write_model_card(run_dir: Path, config: Config, summary: RunSummary) -> None:
    t = config.training
    adapter = method_for(config).has_adapter
    base = config.model.name_or_path
    load = (
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base!r})  # for a .gguf base add gguf_file=...\n"
        "model = PeftModel.from_pretrained(base, \"model\")\ntokenizer = AutoTokenizer.from_pretrained(\"model\")\n```"
        if adapter
        else "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        "model = AutoModelForCausalLM.from_pretrained(\"model\")\ntokenizer = AutoTokenizer.from_pretrained(\"model\")\n```"
    )
    final = "\n".join(f"| {k} | {v} |" for k, v in summary.to_dict().items()
                      if not isinstance(v, (dict, list)) and k != "common_system_prompt")  # a prompt is no result, and may span lines
    text = f"""---
library_name: {"peft" if adapter else "transformers"}
base_model: {base}
tags: [trainer, {t.method}]
---

# Fine-tuned {os.path.basename(base)}

Trained with [trainer](https://pypi.org/project/trainer/) {__version__}, method **{t.method}**, on `{config.data.train}`.

## Use it

From this folder: `trainer chat --run .` or `trainer generate --run . --prompt "..."`. In Python:

{load}
{"A merged copy (no peft needed) is in `merged/`." if config.output.merge_adapter and adapter else ""}

## Training

| setting | value |
| --- | --- |
| base model | `{base}` |
| method | {t.method}{f" (r={t.lora.r}, alpha={t.lora.alpha:g}, dropout={t.lora.dropout:g}, targets={t.lora.target_modules})" if adapter else ""} |
| data | `{config.data.train}` (validation: `{config.data.validation or f"{config.data.validation_split:.0%} held out"}`) |
| learned from | {config.data.train_on} tokens, max length {config.data.max_seq_length}, packing {config.data.packing} |
| length | {f"{t.epochs:g} epochs" if t.epochs else f"{t.max_steps} steps"}, batch {t.batch_size} x {t.gradient_accumulation} |
| optimizer | {t.optimizer}, learning rate {t.learning_rate:g}, {t.scheduler} schedule, warm-up {t.warmup_ratio:g} |
| precision | {t.precision}, seed {t.seed} |

The full configuration is in `config.yaml`; per-step metrics in `metrics.jsonl`; curves in `loss.png`.

## Results

| metric | value |
| --- | --- |
{final}
"""
    (run_dir / "README.md").write_text(text, encoding="utf-8")
