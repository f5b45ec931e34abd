"""The distributed section: validation, and the launcher files generated for GPUs (checked by content: no GPU here)."""
import pytest
import yaml

from conftest import run_trainer
from trainer.config import parse_config
from trainer.distributed import accelerate_config, deepspeed_config, launch_command, num_processes, rank_environments, shard_model
from trainer.errors import UserError


def config(extra: str = "", method: str = "lora"):
    return parse_config(f"model: {{name_or_path: org/m}}\ndata: {{train: x.jsonl}}\n"
                        f"training: {{method: {method}, epochs: 1, batch_size: 3, gradient_accumulation: 2, max_grad_norm: 0.7}}\n" + extra,
                        check_files=False)


def test_fsdp_launches_like_ddp_because_trainer_shards_the_model_itself():
    settings = accelerate_config(config("distributed: {strategy: fsdp, num_processes: 4}"), 4, "bf16")
    assert settings["distributed_type"] == "MULTI_GPU" and settings["num_processes"] == 4 and settings["mixed_precision"] == "bf16"
    assert "fsdp_config" not in settings  # accelerate's FSDP plugin would wrap the model a second time


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_follows_the_training_settings(stage):
    cfg = config(f"distributed: {{strategy: deepspeed, zero_stage: {stage}}}")
    ds = deepspeed_config(cfg, "bf16")
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.7
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (stage == 3)
    settings = accelerate_config(cfg, 2, "bf16", deepspeed_file="/runs/x/launch/deepspeed.json")
    assert settings["distributed_type"] == "DEEPSPEED" and settings["deepspeed_config"]["deepspeed_config_file"].endswith("deepspeed.json")


def test_ddp_on_gpus_goes_through_accelerate_launch_with_its_config(tmp_path):
    cfg = config("distributed: {strategy: ddp}")
    command = launch_command(cfg, ["--config", "x.yaml", "--resume"], tmp_path, gpus=8)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[-4:] == ["trainer", "--config", "x.yaml", "--resume"]
    written = yaml.safe_load((tmp_path / "launch" / "accelerate.yaml").read_text())
    assert written["distributed_type"] == "MULTI_GPU" and written["num_processes"] == 8


def test_cpu_processes_get_their_ranks_and_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    envs = rank_environments(3, 29555)
    assert [e["RANK"] for e in envs] == [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2"]
    assert {e["WORLD_SIZE"] for e in envs} == {"3"} and {e["MASTER_PORT"] for e in envs} == {"29555"}
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"2"}  # 8 cores / 3 processes, rounded down


def test_process_counts_are_checked_against_the_gpus():
    assert num_processes(config("distributed: {strategy: ddp}"), 4) == 4
    with pytest.raises(UserError, match="only 2 GPU"):
        num_processes(config("distributed: {strategy: ddp, num_processes: 8}"), 2)
    with pytest.raises(UserError, match="no GPU to count"):
        num_processes(config("distributed: {strategy: ddp}"), 0)


def test_fsdp_needs_to_know_the_layer_class():
    import torch

    class Plain(torch.nn.Module):
        _no_split_modules = None

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

    with pytest.raises(UserError, match="cannot tell which layers of Plain to shard"):
        shard_model(torch.nn.Sequential(Plain()), Plain())


@pytest.mark.parametrize("extra, method, message", [
    ("distributed: {strategy: fsdp}", "qlora", "cannot be sharded by fsdp"),
    ("distributed: {num_processes: 4}", "lora", "several processes need a strategy"),
    ("distributed: {strategy: ddp}\nbackend: {name: autotrain, autotrain: {allow_differences: true}}", "lora", "own loop only"),
    ("distributed: {strategy: nccl}", "lora", "distributed.strategy"),
])
def test_invalid_distributed_settings_are_named(extra, method, message):
    with pytest.raises(UserError) as raised:
        config(extra, method)
    assert message in raised.value.render()


def test_deepspeed_is_refused_before_loading_anything(tmp_path, tiny_model_dir):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"model: {{name_or_path: {tiny_model_dir}}}\ndata: {{train: {tmp_path}/d.jsonl}}\ntraining: {{epochs: 1}}\n"
                   "distributed: {strategy: deepspeed, num_processes: 2}\n")
    (tmp_path / "d.jsonl").write_text('{"text": "hello"}\n')
    result = run_trainer("--config", str(cfg))
    assert result.returncode == 2 and "distributed.strategy: deepspeed is not supported by this version's training loop" in result.stderr
    assert "Loading" not in result.stderr
