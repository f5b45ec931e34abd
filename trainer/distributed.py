"""Several processes, on one machine or several: the launcher, and what each strategy does in the processes.

`trainer --config x.yaml` with distributed.strategy set re-launches itself, one process per device, with PyTorch's
elastic agent (torchrun's) run in this process (`run_node`): on CPUs over gloo and on GPUs over NCCL alike. Each
process finds its rank in the environment, and only rank 0 writes the run directory. A stop (Ctrl-C, SIGTERM) reaches
every process, which agree on a step, checkpoint together and exit 3; so does the launcher.

With distributed.nodes above one, each machine runs `trainer --config x.yaml --node-rank N` (the files of `trainer
launch` do it); its launcher starts that machine's processes, and the nodes meet at a c10d rendezvous (distributed.
rendezvous, or MASTER_ADDR:MASTER_PORT), whose store the node of rank 0 holds. distributed.nodes' min:max and
max_restarts are the agent's: a node that fails makes the others' processes fail at their next collective, the
agents start them again (up to max_restarts times) once enough nodes are back, and they resume from the last
checkpoint (a restarted process resumes, and so does every process that meets it: recipe.setup_run_dir).

Why torchrun's agent on GPUs too, rather than `accelerate launch` with --num_machines/--machine_rank/
--main_process_ip: accelerate launch is torchrun underneath (its MULTI_GPU launcher calls torch.distributed.run), and
what it adds, a config file turned into environment variables, trainer does not use (the Accelerator gets its mixed
precision from the YAML; fsdp and deepspeed are wrapped by trainer itself, below). It would also make multi-node runs
static (no min:max, no restarts) and turn a stop's exit 3 into 1. One launcher on CPUs and GPUs means the stop, the
restarts and the node ranks tested here on CPU processes are the ones a GPU cluster runs.

ddp is accelerate's: every process holds the whole model. fsdp is trainer's own,
with PyTorch's FSDP2 (`fully_shard`, `shard_model` below) on GPUs and CPUs alike:
each decoder layer (the model's `_no_split_modules` class) is one unit, and
checkpoints gather the shards (trainer/checkpoint.py), so a sharded run saves
and resumes like any other. (accelerate's FSDP plugin does not run on CPUs, so
it could not be tested here.) deepspeed is also trainer's own: each process
hands the model and its optimizer to `deepspeed.initialize` with the ZeRO
settings below (`deepspeed_engine`), and the loop drives the engine's backward
and step; accelerate's DeepSpeed plugin ignores CPUs, so both launch like ddp.
<output.dir>/launch/deepspeed.json records the engine's configuration.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from trainer.config import Config
from trainer.config.sections import DistributedConfig, TrainingConfig
from trainer.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, UserError


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


# the launcher waits this long for its processes to stop before it kills them (torchrun's default, 30 s, is shorter
# than a full fine-tune's checkpoint of model and optimizer state takes to write)
SHUTDOWN_SECONDS = 300


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


def whole_weights(model: Any) -> dict:
    """The model's parameters and persistent buffers by name, each once (the tensors themselves, not copies): a head tied
    to the embeddings is one parameter under the first of its names, as torch's state-dict loading counts it."""
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in model.state_dict().items() if name in names}


def fill_shards_from_first(module: Any, whole: dict, device: Any) -> Any:
    """After `shard_model`: every process's shards of the weights the first process loaded (`whole`: its
    `whole_weights` before sharding; empty on the others, whose model was built on the meta device), sent one tensor
    at a time. `module`: the model (not a wrapper that holds its parts under second names).

    This is FSDP2's form of accelerate's cpu_ram_efficient_loading (and FSDP1's sync_module_states): torch's
    set_model_state_dict with broadcast_from_rank0 sends each whole tensor from the first process and each process
    keeps its shard of it, so a process other than the first never holds more than one whole tensor at a time. Its
    buffers (rotary frequencies) were computed as the model was built and are kept; only the parameters are filled.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if dist.get_rank() != 0:
        computed = {name: buffer.detach().clone() for name, buffer in module.named_buffers()}
        module.to_empty(device=device)  # room for this process's shards alone
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                buffer.copy_(computed[name])
    # strict=False: a tied head's second name is not sent (whole_weights), and filling the first fills both
    set_model_state_dict(module, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False))
    whole.clear()  # the first process's whole tensors can go: each parameter is its shard now
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


# --- the launcher: PyTorch's elastic agent (torchrun's), in this process ------------------------------------------------

LAUNCHER_PID = "TRAINER_LAUNCHER_PID"  # set by `run_node` for the processes it starts: they end with it (die_with_launcher)


@dataclass(frozen=True)
class NodeLaunch:
    """What this machine's launcher starts, and where its processes meet the other nodes' (torchrun's options)."""

    processes: int  # on this machine (--nproc-per-node)
    nodes: tuple[int, int]  # (fewest, most) machines (--nnodes)
    endpoint: str  # host:port of the c10d rendezvous (--rdzv-endpoint); localhost:0 on one machine (a free port)
    run_id: str  # the same on every node (--rdzv-id)
    node_rank: int  # 0 hosts the rendezvous's store (the node at `endpoint`)
    max_restarts: int  # times the processes start again after a failure (--max-restarts)


def rendezvous_endpoint(distributed: DistributedConfig) -> str | None:
    """distributed.rendezvous with its port (29500 when left out), or None."""
    given = distributed.rendezvous
    if given is None:
        return None
    return given if given.rpartition(":")[2].isdigit() and not given.endswith("]") else f"{given}:{DEFAULT_RENDEZVOUS_PORT}"


def node_launch(config: Config, gpus: int, node_rank: int | None, config_file: str) -> NodeLaunch:
    """This machine's share of the run: all of it, or with distributed.nodes above one the node `node_rank` (--node-rank,
    else the environment's NODE_RANK, as Slurm and SkyPilot's launch files and torchrun by hand give it)."""
    import uuid

    d = config.distributed
    processes = num_processes(d, gpus)
    if not several_nodes(d):
        return NodeLaunch(processes, (1, 1), "localhost:0", f"trainer-{uuid.uuid4().hex[:12]}", 0, 0)
    if node_rank is None and os.environ.get("NODE_RANK", "").isdigit():
        node_rank = int(os.environ["NODE_RANK"])
    master = os.environ.get("MASTER_ADDR")
    endpoint = rendezvous_endpoint(d) or (f"{master}:{os.environ.get('MASTER_PORT', DEFAULT_RENDEZVOUS_PORT)}" if master else None)
    low, high = node_range(d)
    if node_rank is None or endpoint is None or node_rank >= high:
        refuse_unlaunched_nodes(d, config_file, node_rank, endpoint)
    assert node_rank is not None and endpoint is not None
    # every node derives the same id from the run directory they share (a requeued job meets at a new store)
    import hashlib

    run_id = "trainer-" + hashlib.sha1(os.path.abspath(os.path.expanduser(config.output.dir)).encode()).hexdigest()[:12]
    return NodeLaunch(processes, (low, high), endpoint, run_id, node_rank, d.max_restarts)


def refuse_unlaunched_nodes(distributed: DistributedConfig, config_file: str, node_rank: int | None, endpoint: str | None) -> None:
    """distributed.nodes above one without this node's rank or the rendezvous: nothing to start here alone."""
    low, high = node_range(distributed)
    missing = []
    if node_rank is None:
        missing.append("which node this is (--node-rank N, or NODE_RANK in the environment: 0 on the first node, where "
                       "the rendezvous is, 1 to nodes-1 on the others)")
    elif node_rank >= high:
        missing.append(f"a node rank below {high} (--node-rank {node_rank} was given; distributed.nodes is {distributed.nodes})")
    if endpoint is None:
        missing.append("where the nodes meet (distributed.rendezvous: host:port of the first node, or MASTER_ADDR and "
                       "MASTER_PORT in the environment)")
    raise UserError(f"distributed.nodes is {distributed.nodes}: this run trains on {low if low == high else f'{low} to {high}'} "
                    f"machines, and this one needs {' and '.join(missing)}; nothing was run. Start it on every node with\n"
                    f"  trainer --config {config_file} --node-rank N --set distributed.rendezvous=FIRST_NODE:{DEFAULT_RENDEZVOUS_PORT}\n"
                    f"or write the file that does it: `trainer launch --to slurm --config {config_file}` (or --to skypilot).")


def threads_per_process(processes: int) -> int:
    """The cores shared out between this machine's processes (torchrun would set OMP_NUM_THREADS=1 for each)."""
    return max(1, len(os.sched_getaffinity(0)) // processes)


def run_node(launch: NodeLaunch, argv: list[str]) -> int:
    """Start `trainer <argv>` as this node's processes with PyTorch's elastic agent, the one torchrun runs, and wait for
    the run; returns the exit status (trainer's: 0, 2, 3, 130; a crashed process's otherwise).

    Why the agent here and not `python -m torch.distributed.run` as a child: torchrun turns a stop into a
    SignalException traceback and exit status 1, and restarts a process that stopped as asked (exit 3) as if it had
    failed (`ended_as_asked`). Here SIGTERM and Ctrl-C are stops: they are passed to the processes (which agree on a step, checkpoint
    together and exit 3, on every node), the agent treats exit 3 as the end of the run rather than a failure, and the
    launcher exits 3 with no traceback. The agent's own handling is left to the signals that kill (SIGHUP, SIGQUIT):
    it ends the processes and raises the SignalException caught below. Everything else is torch's: the c10d
    rendezvous, elastic membership (min:max nodes), restarts from the last checkpoint, process monitoring.
    """
    import signal

    from torch.distributed.elastic.agent.server.api import WorkerSpec
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler
    from torch.distributed.launcher.api import LaunchConfig

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(launch.processes)))
    os.environ[LAUNCHER_PID] = str(os.getpid())
    if launch.nodes != (1, 1):
        # the processes meet at a store of their own each round, not at the rendezvous's: with the shared store
        # (torch's default), rank 0 keeps the first round's address and never writes it for a later round, so a node
        # started again after a failure waits for it until it times out (torch 2.13, dynamic_rendezvous.next_rendezvous)
        os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    low, high = launch.nodes
    settings = LaunchConfig(min_nodes=low, max_nodes=high, nproc_per_node=launch.processes, run_id=launch.run_id,
                            rdzv_backend="c10d", rdzv_endpoint=launch.endpoint, rdzv_configs={"is_host": launch.node_rank == 0},
                            max_restarts=launch.max_restarts, shutdown_timeout=SHUTDOWN_SECONDS, signals_to_handle="SIGHUP,SIGQUIT")
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = settings.signals_to_handle  # read by the agent as it starts processes
    _quiet_agent_logs()
    rendezvous = get_rendezvous_handler(RendezvousParameters(
        backend=settings.rdzv_backend, endpoint=settings.rdzv_endpoint, run_id=settings.run_id, min_nodes=low, max_nodes=high,
        **settings.rdzv_configs))
    spec = WorkerSpec(role=settings.role, local_world_size=launch.processes, entrypoint=sys.executable,
                      args=("-u", "-m", "trainer", *argv), rdzv_handler=rendezvous, max_restarts=launch.max_restarts,
                      monitor_interval=settings.monitor_interval, numa_options=settings.numa_options)
    agent = _agent_class()(spec=spec, logs_specs=settings.logs_specs, start_method=settings.start_method,
                           shutdown_timeout=settings.shutdown_timeout)

    def stop(signum: int, frame: Any) -> None:
        running = agent.running_pids()
        if not running:  # still at the rendezvous: there is nothing to checkpoint
            raise SignalException(f"{signal.Signals(signum).name} before the processes started", signal.Signals(signum))
        for pid in running:  # each process stops once; a second stop within 2 s is the same one (SignalGuard)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    closing = True
    try:
        result = agent.run()
    except SignalException as exc:
        closing = False  # as torchrun: the rendezvous stays open for the other nodes (an elastic run goes on without this one)
        return EXIT_STOPPED if exc.sigval in (signal.SIGINT, signal.SIGTERM) else 128 + int(exc.sigval)
    except RendezvousError as exc:
        raise UserError(f"the nodes did not meet at the rendezvous {launch.endpoint} ({type(exc).__name__}: {exc}); check that "
                        f"every node was started with the same distributed.nodes ({low if low == high else f'{low}:{high}'}) and "
                        "output.dir, and that the first node (--node-rank 0) is up and reachable at that address and port.") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if closing:
            with contextlib.suppress(Exception):
                rendezvous.shutdown()
    if agent.ended is not None:
        return agent.ended
    if result.is_failed():
        return _failure_status(result.failures)
    return EXIT_OK


def ended_as_asked(codes: set[int]) -> int | None:
    """The status a run ends with when its processes exited with trainer's own statuses only, else None (a failure,
    which the agent restarts while max_restarts allows): a stop (3), a problem with the input or the machine (2, which
    a restart would meet again) or a second Ctrl-C (130) are answers, not failures."""
    if not codes or not codes <= {EXIT_STOPPED, EXIT_BAD_INPUT, EXIT_INTERRUPTED}:
        return None
    return next(code for code in (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_STOPPED) if code in codes)


def _agent_class() -> type:
    """torch's LocalElasticAgent, told that processes exiting with trainer's own statuses ended the run as asked."""
    from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    class TrainerAgent(LocalElasticAgent):
        ended: int | None = None  # trainer's status that ended the run (ended_as_asked): nothing to restart

        def _monitor_workers(self, worker_group: Any) -> Any:
            result = super()._monitor_workers(worker_group)
            if result.is_failed():
                self.ended = ended_as_asked({f.exitcode for f in result.failures.values()})
                if self.ended is not None:  # a success to the agent: it waits for the other nodes' agents and ends
                    return RunResult(state=WorkerState.SUCCEEDED, return_values=dict.fromkeys(result.failures))
            return result

        def running_pids(self) -> list[int]:
            context = self._pcontext
            if context is None:
                return []
            handlers = getattr(context, "subprocess_handlers", {})
            return [h.proc.pid for h in handlers.values() if h.proc.poll() is None]

    return TrainerAgent


def _failure_status(failures: dict) -> int:
    """The launcher's exit status for processes that failed: the first failure's (128 + the signal for a process
    killed by one), with a line saying which process it was."""
    rank, first = min(failures.items(), key=lambda item: item[1].timestamp)
    status = first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    how = f"was killed by {first.signal_name()}" if first.exitcode < 0 else f"ended with status {first.exitcode}"
    print(f"training process {rank} (pid {first.pid}) {how}; the run can go on from its last checkpoint with --resume.",
          file=sys.stderr, flush=True)
    return status


def _quiet_agent_logs() -> None:
    """The agent's log, on stderr beside trainer's progress: its warnings and errors only, and not the ones a stop
    makes (a process that stopped after a checkpoint is no failure, and the others are sent the stop too)."""
    import logging

    def not_a_stop(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return f"exitcode: {EXIT_STOPPED})" not in message and "closing signal SIGTERM" not in message

    for name, log in list(logging.root.manager.loggerDict.items()):  # a filter acts on its own logger's records only
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")) and isinstance(log, logging.Logger):
            log.setLevel(logging.WARNING)
            log.addFilter(not_a_stop)


def die_with_launcher() -> None:
    """In a process `run_node` started: end with the launcher, as the processes of a machine that dies do.

    The agent starts each process in a session of its own, so a launcher killed outright (kill -9, a lost node) would
    leave them training; the other nodes would then never see this node fail and restart without it. Linux only."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != int(launcher):  # it died before the line above
        os._exit(128 + int(signal.SIGKILL))


def restarted() -> bool:
    """Whether the elastic agent started this process again after a failure: it goes on from the last checkpoint."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def stay_until_done() -> None:
    """After a stop's checkpoint, in a launched process: further stops are ignored while it exits (the agent sends
    SIGTERM to the processes still running when one exits; the stop must not end as a kill)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
