"""Checkpoints that are complete or absent, never half-written.

A checkpoint is written into a temporary folder beside its final place, each
file flushed to disk, and then renamed in one step: a kill during a save leaves
only a temporary folder, which the next run removes. Everything needed to
continue exactly is in it: the trainable weights, optimizer and scheduler
state, every RNG state, the position in the data and the normalised config.

Weights and optimizer state are written whole, whatever the processes hold:
under fsdp each process has a shard, which `gather_trainable` collects for the
main process to write, and `load_checkpoint` shards again on the way back in.
The optimizer state is keyed by parameter name, not position. Under deepspeed
the ZeRO optimizer's shards are DeepSpeed's to write: every process writes its
own into the checkpoint's zero/ folder (`stage_zero_state`), beside the whole
float32 trainable weights, and such a checkpoint resumes with the same strategy
and number of processes.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainer.errors import UserError

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

STATE_FILE = "trainer_state.json"
ZERO_DIR, ZERO_TAG = "zero", "state"  # DeepSpeed's checkpoint inside ours
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def remove_partial_saves(run_dir: Path) -> None:
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for leftover in folder.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrapped(optimizer: Optimizer) -> Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer holds the torch one


_WHOLE_ON_CPU = dict(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def gather_trainable(model: torch.nn.Module, optimizer: Optimizer) -> tuple[dict, dict]:
    """The trainable weights and the optimizer state, whole and on the CPU.

    Every process must call it (under fsdp the shards are gathered); the main process gets the dicts, the others
    empty ones.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optimizer_state = get_state_dict(model, _unwrapped(optimizer), options=StateDictOptions(**_WHOLE_ON_CPU))
    names = {name for name, _ in model.named_parameters()}  # one name per weight: tied embeddings appear once
    return {k: v for k, v in weights.items() if k in names}, optimizer_state


def gather_weights(model: torch.nn.Module) -> dict:
    """The trainable weights alone, as gather_trainable gathers them (every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(**_WHOLE_ON_CPU))


def gather_zero_weights(model: torch.nn.Module) -> dict:
    """The trainable weights of a DeepSpeed run, whole and in float32 (the optimizer's master copies, not the bf16 ones
    the model computes with). Every process must call it; the main process gets the dict, the others an empty one."""
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    main = dist.get_rank() == 0
    weights = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            whole = safe_get_full_fp32_param(param)  # a collective under ZeRO: every process asks for every weight
            if main:
                weights[name] = whole.detach().to("cpu", copy=True).reshape(getattr(param, "ds_shape", param.shape))
    return weights


def stage_zero_state(engine: DeepSpeedEngine, run_dir: Path, name: str) -> Path:
    """Every process writes its ZeRO shard of the optimizer into a staging folder that save_checkpoint completes."""
    import torch.distributed as dist

    staged = checkpoints_dir(run_dir) / f".tmp-{name}-zero"
    if dist.get_rank() == 0:
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
    dist.barrier()
    try:
        engine.save_checkpoint(str(staged / ZERO_DIR), tag=ZERO_TAG, save_latest=False, exclude_frozen_parameters=True)
    except OSError as exc:
        raise UserError(f"could not write the checkpoint {checkpoints_dir(run_dir) / name}: {exc.strerror or exc}. "
                        "Free some disk space or choose another output.dir; the last complete checkpoint is kept, "
                        "and --resume continues from it.") from None
    dist.barrier()
    return staged


def save_checkpoint(run_dir: Path, name: str, weights: dict, optimizer_state: dict | None, scheduler: LRScheduler, state: dict,
                    config_yaml: str, staged: Path | None = None) -> Path:
    """Write checkpoints/<name> atomically and return its path; `weights` and `optimizer_state` from gather_trainable.

    `staged`: the folder stage_zero_state wrote DeepSpeed's shards into (the optimizer state then is not in
    `optimizer_state`); it becomes the checkpoint.
    """
    import torch.distributed as dist
    from safetensors.torch import save_file

    folder = checkpoints_dir(run_dir)
    final = folder / name
    tmp = staged or folder / f".tmp-{name}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if staged is None:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
        zero = {"processes": dist.get_world_size()} if staged is not None else None
        torch.save({"optimizer": optimizer_state, "zero": zero, "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "optimizer.pt")
        (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")  # written last: marks completeness
        _fsync_tree(tmp)
        if final.exists():
            old = folder / f".tmp-old-{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(folder)
    except Exception as exc:  # OSError, and the writers' own errors (safetensors, torch) for the same I/O failures
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
        raise UserError(
            f"could not write the checkpoint {final}: {reason}. "
            "Free some disk space or choose another output.dir; the last complete checkpoint is kept, "
            "and --resume continues from it."
        ) from None
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Optimizer, scheduler: LRScheduler, engine: DeepSpeedEngine | None = None) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; every process calls it (fsdp shards what it reads).

    `engine`: DeepSpeed's, which reads its own shards back (weights and optimizer state).
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    weights = load_file(str(path / "trainable.safetensors"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = [n for n in weights if n not in trainable]
    if missing:
        raise UserError(f"{path}: the checkpoint does not match the model ({missing[0]} is not a parameter); was the config changed?")
    extra = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer_state = extra["optimizer"]
    options = StateDictOptions(full_state_dict=True, strict=False)
    if engine is not None or extra.get("zero"):
        _load_zero_state(path, extra.get("zero"), engine)
    elif isinstance(optimizer_state["param_groups"][0]["params"][0], int):  # keyed by position: an earlier trainer's
        set_model_state_dict(model, weights, options=options)
        optimizer.load_state_dict(optimizer_state)
    else:
        set_state_dict(model, _unwrapped(optimizer), model_state_dict=weights, optim_state_dict=optimizer_state, options=options)
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def _load_zero_state(path: Path, zero: dict | None, engine: DeepSpeedEngine | None) -> None:
    """DeepSpeed reads back its shards, written by as many processes as there are now."""
    if engine is None:
        assert zero is not None  # load_checkpoint comes here without an engine only for a checkpoint of ZeRO's
        raise UserError(f"{path} was written by a deepspeed run, whose optimizer state is DeepSpeed's; resume it with "
                        f"distributed.strategy: deepspeed and distributed.num_processes: {zero['processes']}.")
    import torch.distributed as dist

    if zero is None:
        raise UserError(f"{path} was not written by a deepspeed run; resume it with the distributed.strategy it was "
                        "written with (see its config.yaml), or start a new run with another output.dir.")
    if zero["processes"] != dist.get_world_size():
        raise UserError(f"{path} was written by {zero['processes']} deepspeed processes and this run has "
                        f"{dist.get_world_size()}; set distributed.num_processes: {zero['processes']} to resume it.")
    loaded, _ = engine.load_checkpoint(str(path / ZERO_DIR), tag=ZERO_TAG, load_module_strict=False,
                                       load_optimizer_states=True, load_lr_scheduler_states=False)
    if loaded is None:
        raise UserError(f"{path / ZERO_DIR}: DeepSpeed could not read its checkpoint; resume from an earlier one by "
                        f"removing this folder, or start a new run with another output.dir.")


def prune(run_dir: Path, keep_last: int, keep: AbstractSet[str] = frozenset()) -> None:
    """Delete all but the newest `keep_last` step checkpoints (and any named in `keep`)."""
    steps = complete_checkpoints(run_dir)
    for old in steps[:-keep_last] if keep_last else steps:
        if old.name not in keep:
            # Renamed first (atomic), then deleted: a kill halfway through the deletion must not leave a folder
            # that still looks complete (its state file present, its weights gone). Leftovers are removed at start.
            doomed = old.with_name(f".tmp-old-{old.name}-{os.getpid()}")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir():
            _fsync_tree(path)
            continue
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

