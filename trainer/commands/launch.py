"""`trainer launch --to slurm|skypilot`: the file that starts a run on several machines (trainer/launch/)."""
from __future__ import annotations

import argparse
import sys

from trainer.commands import Command, SubParsers, add_config_args

TARGETS = ("slurm", "skypilot")  # trainer.launch.targets(), not imported to build the parser


def _add_launch(sub: SubParsers) -> None:
    p = sub.add_parser("launch", help="write the Slurm script or SkyPilot task that runs a config on several machines",
                       description="Write a ready launch file for a run on several machines (distributed.nodes): a Slurm "
                                   "batch script (one task per node, torchrun, requeued with --resume on preemption) or a "
                                   "SkyPilot task (spot nodes, the run directory in a bucket). The GPU is the cheapest of "
                                   "`trainer plan`'s table that fits, and the file says what the plan expects it to cost.")
    add_config_args(p)
    p.add_argument("--to", required=True, choices=TARGETS, help="the scheduler or cloud launcher")
    p.add_argument("--output", "-o", metavar="FILE", help="where to write it (default: <run name>.sbatch or .sky.yaml here; - for stdout)")
    p.add_argument("--gpus-per-node", type=int, metavar="N", help="GPUs (and trainer processes) on each node (default: distributed.num_processes, else 1)")
    p.add_argument("--gpu", metavar="NAME", help="the GPU, by its name in trainer plan's table or SkyPilot's (default: the cheapest that fits)")
    p.add_argument("--gpus", metavar="FILE", help="a GPU table in the form of trainer/plan/gpus.yaml (default: that file)")


def _launch(args: argparse.Namespace) -> int:
    from trainer.launch import write_launch_file

    path, submit = write_launch_file(args.to, args.config, args.overrides, args.output, args.gpus_per_node, args.gpu, args.gpus)
    if path is not None:
        print(f"Wrote {path}. Start it: {submit}", file=sys.stderr)
    return 0


LAUNCH = Command("launch", _add_launch, _launch)
