"""The subcommands of `trainer`, one module per topic; trainer/cli.py builds the parser from COMMANDS and dispatches.

Each command is a `Command`: its name, the function that adds its subparser, and the function that runs it and
returns the exit code (trainer/errors.py). Heavy libraries are imported only inside the functions that run.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

# argparse's type for the object add_subparsers() returns (private in name only: typeshed and argparse's docs use it)
SubParsers = argparse._SubParsersAction


@dataclass(frozen=True)
class Command:
    name: str
    add: Callable[[SubParsers], None]  # adds the command's subparser, with its help and arguments
    run: Callable[[argparse.Namespace], int]  # runs it; returns the exit code


def add_config_args(parser: argparse.ArgumentParser, dest: str = "config", required: bool = True) -> None:
    parser.add_argument("--config", "-c", dest=dest, required=required, metavar="FILE", help="the YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set training.max_steps=5 (repeatable)",
    )
