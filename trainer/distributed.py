"""Several processes: from the YAML's `distributed` section to a launcher command and its configuration files.

`trainer --config x.yaml` with distributed.strategy set re-launches itself, one
process per device: through `accelerate launch` with a generated accelerate
config on NVIDIA GPUs, and on CPUs by starting the processes itself
(`run_local_processes`, over gloo; accelerate's CPU launcher needs MPI). Each
process then finds its rank in the environment, and only the main one writes
the run directory. A stop (Ctrl-C, SIGTERM) reaches every process, which
checkpoint together and exit with status 2.

Why not torchrun on CPUs (measured 2026-12-01, two ddp processes of the tiny
test model on 2 shared cores, SIGTERM to the launcher after 8 steps, as the UI's
Stop does): `python -m torch.distributed.run --nproc-per-node 2 -m trainer`
saved the checkpoint but exited with status 1 and printed a SignalException
traceback (its agent turns the signal into an exception); `run_local_processes`
exits with status 2, the stop said once and no traceback. Reaching step 8 took
22.3 s against 26.5 s, within the noise of the shared machine. Calling torchrun's
`run()` in-process, catching its SignalException and ChildFailedError, with
--shutdown-timeout above a checkpoint's time, is the way to reuse it; that
needs the distributed stop tests run again, which this change did not have time for.

ddp is accelerate's: every process holds the whole model. fsdp is trainer's own,
with PyTorch's FSDP2 (`fully_shard`, `shard_model` below) on GPUs and CPUs alike:
each decoder layer (the model's `_no_split_modules` class) is one unit, and
checkpoints gather the shards (trainer/checkpoint.py), so a sharded run saves
and resumes like any other. (accelerate's FSDP plugin does not run on CPUs, so
it could not be tested here.) deepspeed is also trainer's own: each process
hands the model and its optimizer to `deepspeed.initialize` with the ZeRO
settings below (`deepspeed_engine`), and the loop drives the engine's backward
and step; accelerate's DeepSpeed plugin ignores CPUs, so both launch like ddp.
The generated files are kept in <output.dir>/launch/ (deepspeed.json is the
engine's configuration), so `accelerate launch --config_file <output.dir>/launch/accelerate.yaml
-m trainer --config x.yaml` repeats the launch by hand.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from trainer.config import Config
from trainer.config.sections import DistributedConfig, TrainingConfig
from trainer.errors import EXIT_OK, EXIT_STOPPED, UserError


def is_launched() -> bool:
    """Whether this process was started by a launcher (it has a rank), so it must not launch again."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that speaks and writes."""
    return os.environ.get("RANK", "0") == "0"


DEFAULT_RENDEZVOUS_PORT = 29500  # torchrun's MASTER_PORT default


def node_range(distributed: DistributedConfig) -> tuple[int, int]:
    """distributed.nodes as (fewest, most) machines: 2 -> (2, 2), "2:4" -> (2, 4), empty -> (1, 1).

    The schema has checked the form; that fewest <= most is rules.nodes_are_a_range's to say.
    """
    nodes = distributed.nodes
    if nodes is None:
        return 1, 1
    if isinstance(nodes, int):
        return nodes, nodes
    low, _, high = nodes.partition(":")
    return int(low), int(high)


def several_nodes(distributed: DistributedConfig) -> bool:
    return node_range(distributed)[1] > 1


# torchrun waits this long for its processes to stop before it kills them (its default, 30 s, is shorter than a
# full fine-tune's checkpoint of model and optimizer state takes to write)
SHUTDOWN_SECONDS = 300


def torchrun_args(distributed: DistributedConfig, per_node: int | str, endpoint: str, run_id: str, node_rank: str | None = None) -> list[str]:
    """torchrun's options for one node of a run on several: the same on every node, but for `node_rank` where the
    launcher knows it (the c10d rendezvous hands out ranks itself otherwise). `per_node`: processes on each node (or
    a shell expression, in a launch file); `endpoint`: host:port of the rendezvous."""
    low, high = node_range(distributed)
    args = [f"--nnodes={low}" if low == high else f"--nnodes={low}:{high}", f"--nproc-per-node={per_node}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}",
            f"--max-restarts={distributed.max_restarts}", f"--shutdown-timeout={SHUTDOWN_SECONDS}"]
    if node_rank is not None and low == high:  # an elastic run's nodes may come and go: c10d numbers them
        args.append(f"--node-rank={node_rank}")
    return args


def refuse_unlaunched_nodes(distributed: DistributedConfig, config_file: str) -> None:
    """`trainer --config` with distributed.nodes above one, outside a launcher: the other machines are started by
    the launch files or torchrun on each of them, so this one must not train alone."""
    low, high = node_range(distributed)
    nodes = distributed.nodes
    by_hand = " ".join(["torchrun", *torchrun_args(distributed, distributed.num_processes or "<GPUs per node>",
                                        distributed.rendezvous or f"<first node>:{DEFAULT_RENDEZVOUS_PORT}", "<any run name>")])
    raise UserError(f"distributed.nodes is {nodes}: this run trains on {low if low == high else f'{low} to {high}'} machines, "
                    "each started there; nothing was run on this one alone. Write the file that starts them with "
                    f"`trainer launch --to slurm --config {config_file}` (or --to skypilot), or run on every node:\n"
                    f"  {by_hand} -m trainer --config {config_file}")


def check_launched_nodes(distributed: DistributedConfig) -> None:
    """In a process torchrun started: it started as many machines as distributed.nodes says (a run given --nnodes 1
    would otherwise train on one machine without a word)."""
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    if not world or not local or distributed.nodes is None:  # nodes left empty: torchrun by hand decides
        return
    started = int(world) // max(int(local), 1)
    low, high = node_range(distributed)
    if not low <= started <= high:
        wanted = low if low == high else f"{low} to {high}"
        raise UserError(f"distributed.nodes asks for {wanted} machine(s), and the launcher started {started} "
                        f"({world} processes, {local} on each); give torchrun --nnodes={distributed.nodes or 1}, "
                        "or set distributed.nodes to the machines you start.")


def num_processes(distributed: DistributedConfig, gpus: int) -> int:
    """distributed.num_processes, or one per GPU when it is empty."""
    wanted = distributed.num_processes
    if wanted is None:
        if gpus == 0:
            raise UserError("distributed.num_processes: this machine has no GPU to count; set how many CPU processes to start (e.g. 2).")
        return gpus
    if gpus and wanted > gpus:
        raise UserError(f"distributed.num_processes: {wanted} processes asked for, but only {gpus} GPU(s) are visible; "
                        f"set distributed.num_processes: {gpus} (or leave it empty).")
    return wanted


def shard_model(module: Any, model: Any) -> Any:
    """FSDP: shard `module` (the loss wrapper around `model`) across the processes, one unit per decoder layer.

    Every process keeps 1/N of each weight, its gradient and its optimizer state, and gathers a layer's weights only
    while that layer runs. The embeddings, final norm and head form the outer unit around `module`, whose forward is
    the one the loop calls. Parameters are replaced by sharded ones: build the optimizer after this.
    """
    from torch.distributed.fsdp import fully_shard

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_names = set(getattr(causal_lm, "_no_split_modules", None) or [])
    layers = [m for m in module.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise UserError(f"distributed.strategy: fsdp cannot tell which layers of {type(causal_lm).__name__} to shard "
                        "(it names no _no_split_modules); use distributed.strategy: ddp.")
    for layer in layers:
        fully_shard(layer)
    fully_shard(module)
    return module


def deepspeed_config(t: TrainingConfig, stage: int, mixed_precision: str, hidden_size: int | None = None) -> dict:
    """The DeepSpeed engine's configuration (ZeRO stage 2 or 3) for this run; written to <output.dir>/launch/deepspeed.json.

    The optimizer is trainer's own torch AdamW (ZeRO shards its state), the learning-rate schedule steps in the loop,
    and the loop marks the end of each accumulation window itself (a window at the end of an epoch can be shorter).
    Communication buckets follow the model's hidden size (written "auto" until the model is loaded): DeepSpeed's
    defaults (buckets of 500M elements, every weight kept gathered under ZeRO-3) would hold more memory than ddp on a
    small model. `t`: the training section; `stage`: distributed.zero_stage.
    """
    buckets = _bucket_sizes(stage, hidden_size) if hidden_size else dict.fromkeys(_bucket_sizes(stage, 1), "auto")
    zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True, **buckets}
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "gradient_clipping": t.max_grad_norm,  # 0: no clipping
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW: DeepSpeed only vouches for its own optimizers
        "steps_per_print": 2**31 - 1,  # progress is trainer's to report
        "wall_clock_breakdown": False,
    }


def _bucket_sizes(stage: int, hidden: int) -> dict:
    square = hidden * hidden
    sizes = {"reduce_bucket_size": square, "allgather_bucket_size": square}
    if stage == 3:
        sizes.update({
            "stage3_prefetch_bucket_size": int(0.9 * square),
            "stage3_param_persistence_threshold": 10 * hidden,  # norms, biases: kept whole
            "stage3_max_live_parameters": 4 * square,  # about a layer's weights gathered at once
            "stage3_max_reuse_distance": 4 * square,
        })
    return sizes


def zero3_loading(config: Config, mixed_precision: str) -> dict | None:
    """Under ZeRO-3, the configuration the model is built partitioned with (see models.load_model); else None.

    The bucket sizes wait for the model ("auto"), so they are left to DeepSpeed here: only the stage and the dtype count.
    """
    if config.distributed.strategy != "deepspeed" or config.distributed.zero_stage != 3:
        return None
    settings = deepspeed_config(config.training, config.distributed.zero_stage, mixed_precision)
    settings["zero_optimization"] = {k: v for k, v in settings["zero_optimization"].items() if v != "auto"}
    return settings


def deepspeed_engine(loss_module: Any, optimizer: Any, config: Config, mixed_precision: str) -> Any:
    """Hand the loss wrapper and its optimizer to DeepSpeed; returns the engine (it also holds the wrapped optimizer).

    The engine casts the model to the run's bf16/fp16 and keeps float32 master weights in the optimizer; it reuses the
    process group accelerate opened.
    """
    import contextlib
    import io
    import logging

    chatter = io.StringIO()  # on stdout, where trainer prints results: "Setting accelerator to CPU", "... op built successfully"
    try:
        with contextlib.redirect_stdout(chatter):
            import deepspeed

            for handler in deepspeed.utils.logger.handlers:  # its warnings, on stderr with trainer's progress
                handler.setStream(sys.stderr)
            deepspeed.utils.logger.setLevel(logging.WARNING)  # its INFO lines dump the whole configuration
            settings = deepspeed_config(config.training, config.distributed.zero_stage, mixed_precision,
                                        loss_module.decoder.config.hidden_size)
            engine, *_ = deepspeed.initialize(model=loss_module, optimizer=optimizer, config=settings)
    except BaseException:
        sys.stderr.write(chatter.getvalue())
        raise
    return engine


def end_deepspeed(together: bool) -> None:
    """Close the process group DeepSpeed used: a process exiting with it open aborts ("terminate called ...").

    `together`: every process is ending here (done, or a stop they agreed on), so they wait for each other first;
    a process failing alone must not wait for peers that are still training.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def accelerate_config(distributed: DistributedConfig, processes: int, mixed_precision: str) -> dict:
    """The YAML `accelerate launch --config_file` reads, for GPUs.

    Every strategy launches like ddp (MULTI_GPU): under fsdp and deepspeed trainer wraps the model itself in every
    process (`shard_model`, `deepspeed_engine`), which accelerate's own plugins would do a second time.
    """
    out = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": processes,
        "mixed_precision": mixed_precision,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if distributed.strategy == "deepspeed":
        out["mixed_precision"] = "no"  # the engine casts the model itself (deepspeed.json's bf16/fp16)
    return out


def launch_command(config: Config, argv: list[str], run_dir: Path, gpus: int) -> list[str]:
    """The `accelerate launch` command that starts one `trainer` process per GPU; writes the launcher's files."""
    import yaml

    from trainer.models import mixed_precision

    processes = num_processes(config.distributed, gpus)
    folder = run_dir / "launch"
    folder.mkdir(parents=True, exist_ok=True)
    precision = mixed_precision(config, "cuda")
    if config.distributed.strategy == "deepspeed":  # a record of what each process hands the engine
        (folder / "deepspeed.json").write_text(json.dumps(deepspeed_config(config.training, config.distributed.zero_stage, precision), indent=2))
    settings = accelerate_config(config.distributed, processes, precision)
    (folder / "accelerate.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(folder / "accelerate.yaml"), "-m", "trainer", *argv]


def rank_environments(count: int, port: int) -> list[dict[str, str]]:
    """What each of `count` CPU processes on this machine needs to find the others (torch's env:// rendezvous)."""
    threads = max(1, len(os.sched_getaffinity(0)) // count)  # the cores shared out, not oversubscribed
    return [{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(count), "LOCAL_WORLD_SIZE": str(count),
             "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
            for rank in range(count)]


def run_local_processes(count: int, argv: list[str]) -> int:
    """Run `trainer <argv>` as `count` CPU processes and wait for all of them (see `run_together`)."""
    import socket
    import subprocess

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return run_together([subprocess.Popen([sys.executable, "-m", "trainer", *argv], env={**os.environ, **env})
                         for env in rank_environments(count, port)])


def run_together(children: list) -> int:
    """Wait for the started processes; returns the first non-zero exit status, else 0 (EXIT_STOPPED when they
    stopped together after a checkpoint).

    Ctrl-C or SIGTERM here is passed on to each process once as SIGTERM (trainer processes checkpoint and stop
    together; a launcher passes it on to its own). If one process fails, the others are asked to stop, then ended
    after a minute: a process waiting for a dead peer would otherwise wait for the collective's timeout. A process
    that exits EXIT_STOPPED has not failed: the others stop after the same step and are left to finish their save.
    """
    import signal
    import time

    def stop_all(signum: int | None = None, frame: Any = None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed_at = None
        while any(child.poll() is None for child in children):
            if failed_at is None and any(child.returncode not in (None, EXIT_OK, EXIT_STOPPED) for child in children):
                failed_at = time.monotonic()
                stop_all()
            if failed_at is not None and time.monotonic() - failed_at > 60:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return next((child.returncode for child in children if child.returncode != EXIT_OK), EXIT_OK)
