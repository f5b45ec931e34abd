"""The `trainer` command: the parser and the dispatch. The subcommands live in trainer/commands/, one module per
topic; heavy libraries are imported only by the subcommands that need them."""
from __future__ import annotations

import argparse
import sys

from trainer import __version__
from trainer.commands import Command, add_config_args
from trainer.commands.api import API
from trainer.commands.config import CONVERT, INIT, SCHEMA, VALIDATE
from trainer.commands.data import CACHE, DATA, PLAN
from trainer.commands.export import EXPORT
from trainer.commands.grade import GRADE
from trainer.commands.launch import LAUNCH
from trainer.commands.machine import BACKENDS, DOWNLOAD_DEMO_MODEL
from trainer.commands.model import CHAT, EVAL, GENERATE
from trainer.commands.serve import SERVE, UI
from trainer.commands.train import run_training
from trainer.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, UserError

_STORAGE_ERRORS = {28, 30, 13, 122}  # ENOSPC, EROFS, EACCES, EDQUOT

# in the order `trainer --help` lists them
COMMANDS: tuple[Command, ...] = (VALIDATE, INIT, DATA, PLAN, LAUNCH, SCHEMA, CONVERT, EVAL, GRADE, GENERATE, CHAT, EXPORT, SERVE, API,
                                 BACKENDS, UI, DOWNLOAD_DEMO_MODEL, CACHE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer",
        description="Fine-tune an open language model from one YAML file.",
        epilog="Start with `trainer init > my.yaml`, check it with `trainer validate --config my.yaml`, run it with `trainer --config my.yaml`.",
    )
    parser.add_argument("--version", action="version", version=f"trainer {__version__}")
    add_config_args(parser, dest="run_config", required=False)
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in the run directory")
    parser.add_argument("--node-rank", type=int, metavar="N", default=None,
                        help="in a run on several machines (distributed.nodes), which one this is: 0 on the first, where the "
                             "nodes meet (default: NODE_RANK from the environment)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Library deprecation notices are for library authors, not for someone fine-tuning a model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # what a multi-process launch repeats
    try:
        return _dispatch(parser, args)
    except UserError as exc:
        from trainer.distributed import is_main_process

        if is_main_process():  # the other processes of a distributed run met the same problem: said once
            print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        # a full disk, a read-only or forbidden folder: say which file, not a traceback
        print(f"{exc.filename or 'a file'}: {exc.strerror}. Free some space or choose a writable output.dir "
              "(checkpoints already written are complete; --resume continues from the newest).", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command is None:
        if not args.run_config:
            parser.print_help()
            return EXIT_BAD_INPUT
        return run_training(args)
    return {command.name: command.run for command in COMMANDS}[args.command](args)
