"""From the config's data section to tokenized train and validation sets, with the report of what happened."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from trainer.config import Config
from trainer.config.sections import ModelConfig
from trainer.data.build import EXAMPLES_FILE, SplitReport, build_entry, data_format, held_out, load_entry
from trainer.data.examples import CachedExamples
from trainer.data.formats import Example
from trainer.data.preference import Pair
from trainer.data.prepare import PREFERENCE, convert, fields_of, split_turns
from trainer.data.prepare import fields_of as fields_used  # noqa: F401 (its name before the data cache)
from trainer.data.records import read_records
from trainer.data.store import Rows, Store
from trainer.data.templates import ChatTemplate, resolve_template, template_of
from trainer.data.tokenize import Tokenizer
from trainer.errors import Problem, UserError

SHOWN_PROBLEMS = 20


@dataclass
class PreparedData:
    train: Rows  # memory-mapped from the data cache (store.py): a Sequence of Tokenized, or of TokenizedPair (PairRows)
    validation: Rows
    splits: list[SplitReport]
    template: str
    held_out: bool  # validation was split off the training data
    features: str | None = None  # what the chat template does (renders tools, keeps reasoning, ...), in words
    encoder: Tokenizer | None = None  # what turned the examples into tokens (for showing them as the model sees them)
    config: Config | None = None
    formats: list = field(default_factory=list)  # per source: (format, column names), to make examples of its records
    folder: Path | None = None  # the cache entry

    def source_examples(self, source: int) -> CachedExamples:
        """Every valid example (Pairs for preference data) of data.train (0) or data.validation (1), in input order,
        made again from the records the cache entry keeps (token-refused ones too: they were valid examples)."""
        assert self.config is not None and self.folder is not None
        fmt, names = self.formats[source]
        return CachedExamples(Store(self.folder / EXAMPLES_FILE), source, fmt, names, self.config.data.train_on)

    def examples(self, which: int, limit: int | None = None) -> Iterator[Example | Pair]:
        """The examples (Pairs for preference data) behind the training (0) or validation (1) rows, in order (one per
        row: a piece of its example with data.turns: each); `limit`: only those of the first rows."""
        assert self.config is not None
        rows = self.train if which == 0 else self.validation
        indices = rows.indices if limit is None else rows.indices[:limit]
        if not len(indices):
            return
        store = rows.store
        source = int(store.numbers("source")[indices[0]])
        examples = self.source_examples(source)
        for number, piece in zip(store.numbers("example")[indices].tolist(), store.numbers("piece")[indices].tolist()):
            example = examples[number]
            yield example if examples.fmt == PREFERENCE or self.config.data.turns != "each" else split_turns(example)[piece]


def load_examples(ref: str, config: Config) -> tuple[list, SplitReport]:
    """Every example of a file, folder or Hub data set (Pairs for dpo and orpo), untokenized (for evaluation cases
    and few-shot pools), and the report of what was found."""
    records, problems = read_records(ref)
    fmt, names, detection = data_format(ref, records, problems, config)
    examples = []
    for record in records:
        example, found = convert(record, fmt, names, config.data.train_on)
        problems += found
        if example is not None:
            examples.append(example)
    bad_records = len({(p.file, p.line) for p in problems})
    used = fields_of([e.chosen if isinstance(e, Pair) else e for e in examples])  # a pair by its chosen conversation
    report = SplitReport(ref, detection, len(examples) + bad_records, len(examples), problems, used)
    return examples, report


def split_validation(examples: list, share: float, seed: int) -> tuple[list, list]:
    held = set(held_out(len(examples), share, seed))
    if not held:
        return examples, []
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def prepare_data(config: Config, tokenizer: Any, stop_on_problems: bool = True, progress: bool = False) -> PreparedData:
    """Load, check, split and tokenize, or load all that from the data cache when the same inputs were prepared
    before. With on_invalid: error, any problem stops here, listed (unless the caller reports them)."""
    from trainer.data import cache

    template = checked_template(config, tokenizer) if config.data.format != "text" else None
    encode = Tokenizer(tokenizer, template or _NO_TEMPLATE, config.data.train_on, config.data.max_seq_length,
                       fold_system=config.data.system_prompt == "fold", model_name=model_label(config.model), tool_call_ids=config.data.tool_call_ids)
    key, inputs = cache.cache_key(config.data, config.training.seed, tokenizer, template.key if template else None, model_label(config.model))
    folder = cache.entry_dir(key)
    if not cache.is_complete(folder):
        folder = build_entry(config, encode, key, inputs, progress)
    train, validation, splits, meta = load_entry(folder)
    prepared = PreparedData(train, validation, splits, template.name if template else "none (plain text)", config.data.validation is None,
                            meta["features"], encode, config, [tuple(f) for f in meta["formats"]], folder)
    if config.data.on_invalid == "error" and stop_on_problems:
        _stop_on_problems(prepared.splits)
    if not stop_on_problems:  # `trainer data` explains whatever it found, even when nothing is usable
        return prepared
    if not prepared.train:
        raise UserError(f"{config.data.train}: no usable training examples are left.")
    if not prepared.train.sides().column("trained").any():
        lost = int(prepared.train.sides().column("trained_lost").sum())
        raise UserError(
            f"{config.data.train}: no example has a token to learn from"
            + (f": every answer is cut off by data.max_seq_length={config.data.max_seq_length} ({lost} answer tokens lost). "
               "Raise data.max_seq_length (`trainer data --config ...` shows the lengths)." if lost else
               ": check data.train_on and that the examples have assistant answers.")
        )
    return prepared


_NO_TEMPLATE = resolve_template("chatml", None)


def checked_template(config: Config, tokenizer: Any) -> ChatTemplate:
    """The chat template the training data is rendered with (template_of), once every variable of data.template_kwargs is
    known to be read by it."""
    import difflib

    from trainer.config.rules import RENDER_NAMES

    template = template_of(config.data, tokenizer)
    unread = template.unread()
    if unread:
        read = sorted(template.reads() - set(RENDER_NAMES))
        hints = [f"{name!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, read, n=1)) else "")
                 for name in unread]
        raise UserError(f"data.template_kwargs: the chat template of {model_label(config.model)} never reads {', '.join(hints)}, so "
                        "it would change nothing; remove it, or fix its name. The template reads (besides the conversation): "
                        f"{', '.join(read) or 'nothing else'}.")
    return template


def model_label(model: ModelConfig) -> str:
    """The model as messages name it: its file or folder name, or its Hub id."""
    name = model.name_or_path
    return os.path.basename(name.rstrip("/")) if os.path.exists(os.path.expanduser(name)) else name


def _stop_on_problems(splits: list[SplitReport]) -> None:
    problems = [p for s in splits for p in s.problems]
    if not problems:
        return
    shown = problems[:SHOWN_PROBLEMS]
    rest = len(problems) - len(shown)
    title = (
        f"{len(problems)} problem(s) in the data; nothing was trained. Fix them, or set data.on_invalid: skip "
        "to leave those examples out (they are listed in the report)."
    )
    if rest:
        shown = shown + [Problem(f"... and {rest} more problem(s): run `trainer data --config ...` with on_invalid: skip to list every one.")]
    raise UserError(shown, title=title)
