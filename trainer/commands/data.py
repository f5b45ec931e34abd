"""Commands that look before training: data (the data report) and plan (cost and memory estimates)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from trainer.commands import Command, SubParsers, add_config_args
from trainer.errors import EXIT_BAD_INPUT

if TYPE_CHECKING:
    from trainer.config import Config


def _add_data(sub: SubParsers) -> None:
    p = sub.add_parser("data", help="check the data and report tokens, problems and steps", description="Read the data the config names, check every record, and report problems (with file and line), token statistics with the model's tokenizer, truncation, duplicates, steps per epoch and padding. Exit code 2 when there are problems and data.on_invalid is error.")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--show", type=int, default=0, metavar="N", help="also print the first N training examples as the model sees them, trained text marked")


def _data(args: argparse.Namespace) -> int:
    import json

    from trainer.config import load_config
    from trainer.data.pipeline import prepare_data
    from trainer.data.report import build_report, render_report
    from trainer.models import load_tokenizer

    config = load_config(args.config, args.overrides)
    from trainer.objectives import objective_for

    if objective_for(config).samples:  # prompts, not examples: nothing to tokenize into the data cache
        return _prompts(config, args.json)
    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer, stop_on_problems=False, progress=True)
    from trainer.data.report import render_shown, show_examples

    report = build_report(config, data)
    shown = show_examples(data, args.show) if args.show else []
    if args.json:
        splits = [{"source": s.source, "detection": s.detection, "records": s.records, "kept": s.kept, "fields": s.fields,
                   "variants": s.variants, "problems": [str(p) for p in s.problems]} for s in data.splits]
        print(json.dumps({"splits": splits, "template_features": data.features, **report.to_dict(), "shown": shown}, indent=2))
    else:
        print(render_report(config, data, report))
        if shown:
            print("\n" + render_shown(shown))
    problems = sum(len(s.problems) for s in data.splits)
    if not data.train:
        return EXIT_BAD_INPUT
    if problems and config.data.on_invalid == "error":
        print(f"\n{problems} problem(s) in the data: training would stop. Fix them, or set data.on_invalid: skip.", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _prompts(config: Config, as_json: bool) -> int:
    """`trainer data` for grpo: the prompts found in each source, the layout, and each problem with file:line."""
    import json

    from trainer.data.prompts import describe, read_prompts
    from trainer.reinforcement.rewards import load_rewards

    prompt_set = read_prompts(config, load_rewards(config.training.grpo.graders))
    if as_json:
        splits = [{"source": s.source, "detection": s.detection, "records": s.records, "kept": s.kept,
                   "problems": [str(p) for p in s.problems]} for s in prompt_set.splits]
        print(json.dumps({"splits": splits, "train_prompts": len(prompt_set.train), "validation_prompts": len(prompt_set.validation)}, indent=2))
    else:
        print(describe(prompt_set))
    problems = sum(len(s.problems) for s in prompt_set.splits)
    if not prompt_set.train or (problems and config.data.on_invalid == "error"):
        if problems:
            print(f"\n{problems} problem(s) in the prompts: training would stop. Fix them, or set data.on_invalid: skip.", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _add_plan(sub: SubParsers) -> None:
    p = sub.add_parser("plan", help="estimate parameters, memory, time, cost and hosting savings before training", description="Before anything is trained (only the model's config and, where local, its tokenizer are read): parameters, memory by part and its peak, whether it fits common GPUs and at what batch, time and cost on each, prompt tokens saved against few-shot and retrieval prompting, and whether there is enough data.")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--requests", type=int, metavar="N", help="requests per month, for the hosting saving")
    p.add_argument("--price-per-million", type=float, metavar="P", help="price per million prompt tokens, for the hosting saving")
    p.add_argument("--gpus", metavar="FILE", help="a GPU table in the form of trainer/plan/gpus.yaml (default: that file)")


def _plan(args: argparse.Namespace) -> int:
    import json

    from trainer.config import load_config
    from trainer.plan import make_plan, render_plan

    config = load_config(args.config, args.overrides)
    plan = make_plan(config, args.requests, args.price_per_million, args.gpus)
    print(json.dumps(plan, indent=2) if args.json else render_plan(plan))
    return 0


def _add_cache(sub: SubParsers) -> None:
    from trainer.data.cache import add_cache_command

    add_cache_command(sub)


def _cache(args: argparse.Namespace) -> int:
    from trainer.data.cache import cache_command

    return cache_command(args)


DATA = Command("data", _add_data, _data)
CACHE = Command("cache", _add_cache, _cache)
PLAN = Command("plan", _add_plan, _plan)
