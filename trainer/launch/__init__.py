"""`trainer launch --to slurm|skypilot`: the file that starts a run on several machines, written from its YAML.

Both targets start the same thing on every node: `trainer --config x.yaml --node-rank N`, whose launcher (PyTorch's
elastic agent, torchrun's, in trainer's process: trainer/distributed.py) starts one trainer process per GPU and meets
the other nodes at a c10d rendezvous (distributed.rendezvous, else the first node of the job, as MASTER_ADDR). What differs is how the nodes are got and how a run comes back after losing them: Slurm
requeues the job (slurm.py), SkyPilot's managed jobs bring spot nodes back (skypilot.py); either way the run goes
on from its last checkpoint with --resume. `LaunchSpec` is everything a target needs, made once here; the GPU
comes from `trainer plan`'s table, whose time and cost on the run's GPUs the file carries as a comment.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.config import Config, load_config
from trainer.distributed import node_range, rendezvous_endpoint, several_nodes
from trainer.errors import UserError
from trainer.plan.cost import Gpu, load_gpus
from trainer.plan.report import GpusInfo, Plan, gpu_lines


@dataclass(frozen=True)
class LaunchSpec:
    """What a launch file says, whichever the target."""

    config: Config  # as the nodes will read it: with `overrides`
    config_file: Path  # absolute: the nodes read the same file (Slurm: shared storage; SkyPilot: uploaded)
    overrides: tuple[str, ...]  # --set KEY=VALUE given to `trainer launch`, repeated on every node
    workdir: Path  # where `trainer launch` ran: relative paths in the config start there
    run_dir: Path  # output.dir, absolute
    name: str  # the job's name: the run directory's
    gpus_per_node: int
    gpu: Gpu | None  # the GPU of the table the run is planned on (None: not chosen, Slurm only)
    plan_comment: tuple[str, ...]  # lines of `trainer plan`'s GPU table, or why there is none
    python: str  # the Python that runs trainer on the nodes (Slurm: this one, on shared storage)

    @property
    def nodes(self) -> tuple[int, int]:
        return node_range(self.config.distributed)

    @property
    def endpoint(self) -> str | None:
        """distributed.rendezvous with its port; None: the launcher takes its first node."""
        return rendezvous_endpoint(self.config.distributed)

    def trainer_args(self, overrides: tuple[str, ...] = ()) -> list[str]:
        """`-m trainer ...` as every node runs it: the config, the overrides, and --resume (a requeued or recovered job
        goes on from its last checkpoint; the first start has none and begins)."""
        sets = [arg for override in (*self.overrides, *overrides) for arg in ("--set", override)]
        return ["-m", "trainer", "--config", str(self.config_file), *sets, "--resume"]


def launch_spec(config_file: str, overrides: list[str], gpus_per_node: int | None, gpu_name: str | None,
                gpus_file: str | None = None, need_gpu: bool = False) -> LaunchSpec:
    """Read the config as the nodes will (with distributed.num_processes set to the GPUs of a node) and plan it.

    `need_gpu`: the target must name an accelerator (SkyPilot), so with neither --gpu nor a plan it is an error.
    """
    sets = list(overrides)
    if gpus_per_node is not None:
        sets.append(f"distributed.num_processes={gpus_per_node}")
    config = load_config(config_file, sets)
    d = config.distributed
    if not several_nodes(d):
        raise UserError(f"{config_file}: distributed.nodes is {d.nodes or 'empty (this machine)'}: a launch file is for several "
                        "machines; set distributed.nodes (e.g. --set distributed.nodes=2, with distributed.strategy: ddp), or "
                        f"run it here with `trainer --config {config_file}`.")
    per_node = d.num_processes or 1  # a node's GPUs cannot be counted from here: one, unless said
    if d.num_processes is None:
        sets.append(f"distributed.num_processes={per_node}")
        config = load_config(config_file, sets)
    table = load_gpus(gpus_file)
    plan, why_not = _plan(config, gpus_file)
    gpu = _choose_gpu(config, table.gpus, plan["gpus"] if plan else None, gpu_name, why_not, need_gpu)
    run_dir = Path(os.path.abspath(os.path.expanduser(config.output.dir)))
    return LaunchSpec(config, Path(os.path.abspath(config_file)), tuple(sets), Path.cwd(), run_dir, run_dir.name or "trainer",
                      per_node, gpu, tuple(_plan_comment(config, plan["gpus"] if plan else None, gpu, why_not)), sys.executable)


def _plan(config: Config, gpus_file: str | None) -> tuple[Plan | None, str]:
    """`trainer plan` of the run, or None and why not (the model's config.json cannot be read from here)."""
    from trainer.plan import make_plan

    try:
        return make_plan(config, gpus_file=gpus_file), ""
    except UserError as exc:
        return None, exc.render().strip().splitlines()[-1].strip()


def _choose_gpu(config: Config, gpus: tuple[Gpu, ...], planned: GpusInfo | None, wanted: str | None, why_not: str, need: bool) -> Gpu | None:
    """--gpu by its name in the table or in SkyPilot's catalog; else, of those the plan says the run fits (in bf16 where
    the config asks for it), the one with the lowest price per FLOP: the plan's cost of a run is its FLOPs times that, so
    it is the cheapest run whether or not the data's tokens are known."""
    if wanted is not None:
        key = wanted.replace(" ", "").lower()
        for gpu in gpus:
            if key in (gpu.name.replace(" ", "").lower(), gpu.skypilot.lower()):
                return gpu
        raise UserError(f"--gpu {wanted}: not in the GPU table; give one of: {', '.join(g.name for g in gpus)} "
                        "(or add yours to trainer/plan/gpus.yaml, or to a table of your own with --gpus FILE).")
    if planned is None:
        if need:
            raise UserError(f"the plan cannot choose a GPU ({why_not}); say which with --gpu NAME, one of: {', '.join(g.name for g in gpus)}.")
        return None
    bf16 = config.training.precision == "bf16" or config.model.dtype == "bfloat16"
    fitting = [(gpu.price_per_hour / gpu.tflops, gpu) for gpu, row in zip(gpus, planned["rows"]) if row["micro_batch"] and (gpu.bf16 or not bf16)]
    if not fitting:
        raise UserError("the plan finds no GPU of the table on which this run fits at its micro-batch (trainer plan says "
                        "by how much); lower training.batch_size, turn on training.gradient_checkpointing, or choose one "
                        "with --gpu NAME if you know better.")
    return min(fitting, key=lambda pair: pair[0])[1]


def _plan_comment(config: Config, planned: GpusInfo | None, gpu: Gpu | None, why_not: str) -> list[str]:
    if planned is None:
        return [f"`trainer plan` could not plan this run here: {why_not}"]
    lines = [f"`trainer plan` of this run{f' (this file asks for {gpu.name})' if gpu else ''}:", *gpu_lines(planned)]
    if config.distributed.strategy in ("fsdp", "deepspeed"):
        lines.append(f"  (the peak is a whole model's on one GPU: {config.distributed.strategy} shares it out, so it is an upper bound)")
    if not any("hours" in row for row in planned["rows"]):
        lines.append("  (time and cost need the data's tokens, counted with the model's tokenizer where it is on the machine "
                     "that runs `trainer launch`)")
    return lines


def comment(lines: tuple[str, ...] | list[str]) -> list[str]:
    return [f"# {line}".rstrip() for line in lines]


@dataclass(frozen=True)
class Target:
    """A launch target: the text of its file, the file's suffix, and the command that starts it."""

    write: Callable[[LaunchSpec], str]
    suffix: str
    submit: Callable[[LaunchSpec, Path], str]
    need_gpu: bool  # it must name an accelerator (SkyPilot rents one); Slurm's nodes have theirs


def targets() -> dict[str, Target]:
    from trainer.launch import skypilot, slurm  # they import this module's LaunchSpec

    return {"slurm": Target(slurm.sbatch_script, ".sbatch", slurm.submit_hint, need_gpu=False),
            "skypilot": Target(skypilot.task_yaml, ".sky.yaml", skypilot.submit_hint, need_gpu=True)}


def write_launch_file(to: str, config_file: str, overrides: list[str], output: str | None, gpus_per_node: int | None = None,
                      gpu: str | None = None, gpus_file: str | None = None) -> tuple[Path | None, str]:
    """Write the launch file for target `to` (to `output`, "-" for stdout, default <run name><suffix> here).
    Returns the file written (None for stdout) and the command that starts it."""
    chosen = targets()[to]
    spec = launch_spec(config_file, overrides, gpus_per_node, gpu, gpus_file, need_gpu=chosen.need_gpu)
    text = chosen.write(spec)
    if output == "-":
        sys.stdout.write(text)
        return None, chosen.submit(spec, Path(f"{spec.name}{chosen.suffix}"))
    path = Path(output) if output else Path(f"{spec.name}{chosen.suffix}")
    path.write_text(text)
    if to == "slurm":
        path.chmod(0o755)
    return path, chosen.submit(spec, path)
