"""Several processes: from the YAML's `distributed` section to a launcher command and its configuration files.

`trainer --config x.yaml` with distributed.strategy set re-launches itself, one
process per device: through `accelerate launch` with a generated accelerate
config on NVIDIA GPUs, and through `torch.distributed.run` on CPUs (over gloo;
accelerate's CPU launcher needs MPI). Each process then finds its rank in the
environment, and only the main one writes the run directory.

ddp is accelerate's: every process holds the whole model. fsdp is trainer's own,
with PyTorch's FSDP2 (`fully_shard`, `shard_model` below) on GPUs and CPUs alike:
each decoder layer (the model's `_no_split_modules` class) is one unit, and
checkpoints gather the shards (trainer/checkpoint.py), so a sharded run saves
and resumes like any other. (accelerate's FSDP plugin does not run on CPUs, so
it could not be tested here.) deepspeed's launcher files are generated, but its
runs are refused until its engine is wired into the loop. The generated files are kept in
<output.dir>/launch/, so `accelerate launch --config_file <output.dir>/launch/accelerate.yaml
-m trainer --config x.yaml` repeats the launch by hand.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from trainer.config import Config
from trainer.errors import UserError


def is_launched() -> bool:
    """Whether this process was started by a launcher (it has a rank), so it must not launch again."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def num_processes(config: Config, gpus: int) -> int:
    wanted = config.distributed.num_processes
    if wanted is None:
        if gpus == 0:
            raise UserError("distributed.num_processes: this machine has no GPU to count; set how many CPU processes to start (e.g. 2).")
        return gpus
    if gpus and wanted > gpus:
        raise UserError(f"distributed.num_processes: {wanted} processes asked for, but only {gpus} GPU(s) are visible; "
                        f"set distributed.num_processes: {gpus} (or leave it empty).")
    return wanted


def shard_model(module, model):
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


def is_sharded(module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def deepspeed_config(config: Config, mixed_precision: str) -> dict:
    t = config.training
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "gradient_clipping": t.max_grad_norm if t.max_grad_norm > 0 else 1e9,
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16"},
        "zero_optimization": {
            "stage": config.distributed.zero_stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
            **({"stage3_gather_16bit_weights_on_model_save": True} if config.distributed.zero_stage == 3 else {}),
        },
    }


def accelerate_config(config: Config, processes: int, mixed_precision: str, deepspeed_file: str | None = None) -> dict:
    """The YAML `accelerate launch --config_file` reads, for GPUs.

    fsdp launches like ddp (MULTI_GPU): trainer shards the model itself in every process (`shard_model`).
    """
    strategy = config.distributed.strategy
    out = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "MULTI_GPU", "deepspeed": "DEEPSPEED"}[strategy],
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": processes,
        "mixed_precision": mixed_precision,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if strategy == "deepspeed":
        out["deepspeed_config"] = {"deepspeed_config_file": deepspeed_file, "zero3_init_flag": config.distributed.zero_stage == 3}
        out.pop("mixed_precision")  # DeepSpeed takes it from its JSON
    return out


def launch_command(config: Config, argv: list[str], run_dir: Path, gpus: int) -> list[str]:
    """The command that starts one `trainer` process per device with the same arguments; writes the launcher's files."""
    import yaml

    from trainer.models import mixed_precision

    processes = num_processes(config, gpus)
    trainer = ["-m", "trainer", *argv]
    if gpus == 0:  # CPU processes: DDP over gloo
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *trainer]
    folder = run_dir / "launch"
    folder.mkdir(parents=True, exist_ok=True)
    precision = mixed_precision(config, "cuda")
    deepspeed_file = None
    if config.distributed.strategy == "deepspeed":
        deepspeed_file = str(folder / "deepspeed.json")
        Path(deepspeed_file).write_text(json.dumps(deepspeed_config(config, precision), indent=2))
    settings = accelerate_config(config, processes, precision, deepspeed_file)
    (folder / "accelerate.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(folder / "accelerate.yaml"), *trainer]
