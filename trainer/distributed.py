"""Several processes: from the YAML's `distributed` section to a launcher command and its configuration files.

`trainer --config x.yaml` with distributed.strategy set re-launches itself, one
process per device: through `accelerate launch` with a generated accelerate
config on NVIDIA GPUs (DDP, FSDP with the model's decoder-layer class as the
wrapping unit, or DeepSpeed ZeRO with a generated JSON), and through
`torch.distributed.run` on CPUs (DDP over gloo; accelerate's CPU launcher needs
MPI). Each process then finds its rank in the environment, and only the main
one writes the run directory. The generated files are kept in
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


def decoder_layer_class(config: Config) -> str:
    """The class FSDP wraps as one unit: the model's own `_no_split_modules` (e.g. LlamaDecoderLayer)."""
    import transformers

    from trainer.models import dequantised_gguf, is_gguf

    name = config.model.name_or_path
    source = str(dequantised_gguf(Path(name).expanduser())) if is_gguf(name) else name
    model_config = transformers.AutoConfig.from_pretrained(source, revision=config.model.revision,
                                                           trust_remote_code=config.model.trust_remote_code)
    for architecture in model_config.architectures or []:
        layers = getattr(getattr(transformers, architecture, None), "_no_split_modules", None)
        if layers:
            return layers[0]
    raise UserError(f"model.name_or_path: cannot tell which layer class of {name!r} fsdp should wrap; use distributed.strategy: ddp.")


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


def accelerate_config(config: Config, processes: int, mixed_precision: str, layer_class: str | None = None,
                      deepspeed_file: str | None = None) -> dict:
    """The YAML `accelerate launch --config_file` reads, for GPUs."""
    strategy = config.distributed.strategy
    out = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[strategy],
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": processes,
        "mixed_precision": mixed_precision,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if strategy == "fsdp":
        out["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": layer_class,
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_use_orig_params": True,  # LoRA: frozen and trainable weights live in the same wrapped units
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_sync_module_states": True,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": config.training.gradient_checkpointing,
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
    layer = decoder_layer_class(config) if config.distributed.strategy == "fsdp" else None
    settings = accelerate_config(config, processes, precision, layer, deepspeed_file)
    (folder / "accelerate.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(folder / "accelerate.yaml"), *trainer]
