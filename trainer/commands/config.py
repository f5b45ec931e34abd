"""Commands about the config itself: validate, init, schema, convert. None of them imports torch."""
from __future__ import annotations

import argparse
import sys

from trainer import __version__
from trainer.commands import Command, SubParsers, add_config_args
from trainer.errors import UserError


def _add_validate(sub: SubParsers) -> None:
    p = sub.add_parser("validate", help="check a config and report every problem at once", description="Check a config file against the schema and the rules, and report every problem at once. Exit code 0 when valid, 2 when not.")
    add_config_args(p)
    p.add_argument("--print", action="store_true", help="print the normalised config (defaults filled in)")


def _validate(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.config.rules import check_hardware
    from trainer.console import warn
    from trainer.engine import problems_before_running
    from trainer.hardware import Hardware

    config = load_config(args.config, args.overrides)
    problems = problems_before_running(config, args.config, machine=False)
    if problems:  # what `trainer --config` would refuse before loading anything
        raise UserError(problems, title=f"{args.config}: {len(problems)} problem(s) with running this config; nothing would be run.")
    from trainer.backends import get_backend

    on_this_machine = check_hardware(config, Hardware.guess()) + get_backend(config.backend.name).check_machine(config)
    for path, message in on_this_machine:
        warn(f"{'.'.join(map(str, path))}: on this machine, {message} (checked again when the run starts)")
    if args.print:
        sys.stdout.write(config.to_yaml())
    else:
        t = config.training
        length = f"{t.epochs:g} epoch(s)" if t.epochs is not None else f"{t.max_steps} steps"
        print(f"{args.config}: valid ({t.method} on {config.model.name_or_path}, {length}, backend {config.backend.name})")
    return 0


def _add_init(sub: SubParsers) -> None:
    p = sub.add_parser("init", help="write a commented starter config", description="Write a commented starter config to stdout (or to --output).")
    from trainer.config.presets import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default="cpu-demo", help="which starter (default: cpu-demo)")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def _init(args: argparse.Namespace) -> int:
    import os

    from trainer.config.presets import preset_text

    text = preset_text(args.preset)
    if not args.output:
        sys.stdout.write(text)
        return 0
    if os.path.exists(args.output) and not args.force:
        raise UserError(f"{args.output} already exists; choose another name or add --force to overwrite it.")
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"Wrote {args.output} (preset {args.preset}). Check it with: trainer validate --config {args.output}", file=sys.stderr)
    return 0


def _add_schema(sub: SubParsers) -> None:
    sub.add_parser("schema", help="print the JSON Schema of the config", description="Print the JSON Schema (draft 2020-12) of the config, for editors and tools.")


def _schema(args: argparse.Namespace) -> int:
    from trainer.config.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def _add_convert(sub: SubParsers) -> None:
    p = sub.add_parser("convert", help="translate another tool's config into trainer's", description="Translate another tool's config file into trainer's YAML and print it.")
    p.add_argument("--from", dest="source_format", choices=["autotrain"], required=True, help="the format of FILE")
    p.add_argument("file", metavar="FILE", help="the config file to translate")


def _convert(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    config = load_config(args.file, elsewhere=True)  # a translation needs neither the secrets nor the data it names
    sys.stdout.write(f"# Translated from AutoTrain config {args.file} by trainer {__version__}\n")
    sys.stdout.write(config.to_yaml())
    return 0


VALIDATE = Command("validate", _add_validate, _validate)
INIT = Command("init", _add_init, _init)
SCHEMA = Command("schema", _add_schema, _schema)
CONVERT = Command("convert", _add_convert, _convert)
