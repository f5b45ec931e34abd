"""The distributed section: validation, and the launcher files generated for GPUs (checked by content: no GPU here)."""
import json

import pytest
import yaml

from trainer.config import parse_config
from trainer.distributed import accelerate_config, deepspeed_config, launch_command, num_processes, rank_environments, shard_model
from trainer.errors import UserError


def config(extra: str = "", method: str = "lora", optimizer: str = "adamw"):
    return parse_config(f"model: {{name_or_path: org/m}}\ndata: {{train: x.jsonl}}\n"
                        f"training: {{method: {method}, optimizer: {optimizer}, epochs: 1, batch_size: 3, gradient_accumulation: 2, "
                        "max_grad_norm: 0.7}\n" + extra, check_files=False)


def test_fsdp_launches_like_ddp_because_trainer_shards_the_model_itself():
    settings = accelerate_config(config("distributed: {strategy: fsdp, num_processes: 4}").distributed, 4, "bf16")
    assert settings["distributed_type"] == "MULTI_GPU" and settings["num_processes"] == 4 and settings["mixed_precision"] == "bf16"
    assert "fsdp_config" not in settings  # accelerate's FSDP plugin would wrap the model a second time


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_follows_the_training_settings(stage, tmp_path):
    cfg = config(f"distributed: {{strategy: deepspeed, zero_stage: {stage}}}")
    ds = deepspeed_config(cfg.training, cfg.distributed.zero_stage, "bf16", hidden_size=64)
    assert ds["zero_optimization"]["stage"] == stage
    # buckets sized by the model, not DeepSpeed's 500M-element defaults; under ZeRO-3 only a few layers stay gathered
    assert ds["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert ds["zero_optimization"].get("stage3_max_live_parameters") == (4 * 64 * 64 if stage == 3 else None)
    assert deepspeed_config(cfg.training, cfg.distributed.zero_stage, "bf16")["zero_optimization"]["reduce_bucket_size"] == "auto"  # before the model is loaded
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.7
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert deepspeed_config(cfg.training, cfg.distributed.zero_stage, "no")["bf16"] == {"enabled": False}
    command = launch_command(cfg, ["--config", "x.yaml"], tmp_path, gpus=2)
    assert command[-3:] == ["trainer", "--config", "x.yaml"]
    from trainer.models import mixed_precision

    # the record of what each process hands the engine (bf16 where the GPUs compute in it; this machine has none)
    assert json.loads((tmp_path / "launch" / "deepspeed.json").read_text()) == deepspeed_config(cfg.training, cfg.distributed.zero_stage, mixed_precision(cfg, "cuda"))
    written = yaml.safe_load((tmp_path / "launch" / "accelerate.yaml").read_text())
    # trainer starts the engine itself in each process; accelerate must neither wrap the model nor autocast
    assert written["distributed_type"] == "MULTI_GPU" and written["mixed_precision"] == "no" and "deepspeed_config" not in written


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
    assert num_processes(config("distributed: {strategy: ddp}").distributed, 4) == 4
    with pytest.raises(UserError, match="only 2 GPU"):
        num_processes(config("distributed: {strategy: ddp, num_processes: 8}").distributed, 2)
    with pytest.raises(UserError, match="no GPU to count"):
        num_processes(config("distributed: {strategy: ddp}").distributed, 0)


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
    ("distributed: {strategy: deepspeed}", "qlora", "do not survive DeepSpeed's cast"),
])
def test_invalid_distributed_settings_are_named(extra, method, message):
    with pytest.raises(UserError) as raised:
        config(extra, method)
    assert message in raised.value.render()


def test_deepspeed_refuses_the_8bit_optimizer():
    with pytest.raises(UserError) as raised:
        config("distributed: {strategy: deepspeed}", optimizer="adamw_8bit")
    assert "training.optimizer" in raised.value.render() and "set training.optimizer: adamw" in raised.value.render()


def test_deepspeed_without_its_package_says_how_to_install_it(monkeypatch):
    from trainer.config.rules import check_hardware
    from trainer.hardware import Hardware

    monkeypatch.setattr("trainer.config.rules.has_package", lambda name: name != "deepspeed")
    found = check_hardware(config("distributed: {strategy: deepspeed, num_processes: 2}"), Hardware.guess())
    assert found == [(("distributed", "strategy"), "deepspeed requires the deepspeed package; install it with "
                      "`pip install 'trainer[deepspeed]'`, or set distributed.strategy: fsdp (it shards the same state as ZeRO-3).")]


def test_a_checkpoint_of_another_strategy_is_not_resumed_as_deepspeed(tmp_path):
    from trainer.checkpoint import _load_zero_state

    # its optimizer state is trainer's name-keyed one, which ZeRO's shards cannot be made from
    with pytest.raises(UserError, match="was not written by a deepspeed run; resume it with the distributed.strategy it was written with"):
        _load_zero_state(tmp_path / "step-4", None, engine=object())


def test_zero3_builds_partitioned_only_while_loading():
    """transformers partitions every model it builds while a ZeRO-3 config lives: the fresh base the merge loads
    after training (main process only) must load whole, or it would wait for the other processes forever."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from trainer.distributed import zero3_loading
    from trainer.models import _built_partitioned

    assert zero3_loading(config("distributed: {strategy: deepspeed, zero_stage: 2}"), "no") is None
    settings = zero3_loading(config("distributed: {strategy: deepspeed, zero_stage: 3}"), "bf16")
    assert "auto" not in settings["zero_optimization"].values() and settings["bf16"] == {"enabled": True}
    with _built_partitioned(settings):
        assert is_deepspeed_zero3_enabled()
    assert not is_deepspeed_zero3_enabled()


# ---- several nodes (issue 31) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    ("distributed: {nodes: 2}", "distributed.nodes: several machines train together only with a distributed strategy; "
                                "set distributed.strategy: ddp"),
    ("distributed: {strategy: ddp, nodes: '4:2'}", "distributed.nodes: '4:2' asks for at least 4 and at most 2 machines; "
                                                   "write min:max with min <= max, e.g. 2:4."),
    ("distributed: {strategy: ddp, nodes: 'two'}", "distributed.nodes: 'two' is not in the right form."),
    ("distributed: {strategy: ddp, nodes: 0}", "distributed.nodes: 0 is out of range: it must be at least 1"),
    ("distributed: {strategy: ddp, rendezvous: 'head:29500'}", "distributed.rendezvous: a rendezvous is where several machines "
                                                              "meet, and distributed.nodes is one; set distributed.nodes"),
    ("distributed: {strategy: ddp, nodes: 1, max_restarts: 2}", "distributed.max_restarts: restarts after a failed node need a "
                                                                "run on several machines"),
    ("distributed: {strategy: ddp, nodes: 2, rendezvous: 'head:99999'}", "port 99999 of 'head:99999' is not a port"),
    ("distributed: {strategy: ddp, nodes: 2, rendezvous: 'http://head:1'}", "distributed.rendezvous: 'http://head:1' is not in the right form"),
    ("distributed: {strategy: deepspeed, nodes: '2:4'}", "deepspeed resumes only with the number of processes that saved"),
])
def test_invalid_node_settings_are_named_at_their_line(extra, message):
    with pytest.raises(UserError) as raised:
        parse_config("model: {name_or_path: org/m}\ndata: {train: x.jsonl}\ntraining: {epochs: 1}\n" + extra, "x.yaml", check_files=False)
    rendered = raised.value.render()
    assert "x.yaml:4:" in rendered and message in rendered


def test_nodes_as_a_count_or_an_elastic_range():
    from trainer.distributed import node_range, several_nodes

    assert node_range(config().distributed) == (1, 1) and not several_nodes(config().distributed)
    assert node_range(config("distributed: {strategy: ddp, nodes: 3}").distributed) == (3, 3)
    # unquoted, YAML 1.1 would read 2:4 as the base-60 number 124
    elastic = config("distributed:\n  strategy: fsdp\n  nodes: 2:4\n  rendezvous: '[fd00::1]:29400'\n  max_restarts: 3\n").distributed
    assert elastic.nodes == "2:4" and node_range(elastic) == (2, 4) and several_nodes(elastic) and elastic.max_restarts == 3
    overridden = parse_config("model: {name_or_path: org/m}\ndata: {train: x.jsonl}\ntraining: {epochs: 1}\n", "x.yaml",
                              ["distributed.strategy=ddp", "distributed.nodes=1:8"], check_files=False)
    assert node_range(overridden.distributed) == (1, 8)


def test_torchrun_options_for_fixed_and_elastic_nodes():
    from trainer.distributed import torchrun_args

    fixed = torchrun_args(config("distributed: {strategy: ddp, nodes: 2, max_restarts: 1}").distributed, 8, "head:29500", "job7", "$RANK")
    assert fixed == ["--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29500", "--rdzv-id=job7",
                     "--max-restarts=1", "--shutdown-timeout=300", "--node-rank=$RANK"]
    elastic = torchrun_args(config("distributed: {strategy: ddp, nodes: '2:4'}").distributed, 8, "head:29500", "job7", "$RANK")
    assert "--nnodes=2:4" in elastic and not any(a.startswith("--node-rank") for a in elastic)  # c10d numbers elastic nodes


def test_several_nodes_outside_a_launcher_refuse_and_say_how_to_launch(tmp_path, monkeypatch, capsys):
    from trainer.cli import main

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "x.yaml").write_text("model: {name_or_path: org/m}\ndata: {train: x.jsonl}\ntraining: {epochs: 1}\n"
                                     "distributed: {strategy: ddp, nodes: 2, num_processes: 4}\noutput: {dir: run}\n")
    assert main(["--config", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "nothing was run on this one alone" in err and "trainer launch --to slurm --config x.yaml" in err
    assert "torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=<first node>:29500" in err
    assert not (tmp_path / "run").exists()


def test_a_launcher_that_started_too_few_nodes_is_refused(monkeypatch):
    from trainer.distributed import check_launched_nodes

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun --nnodes 1 --nproc-per-node 8
    with pytest.raises(UserError, match=r"asks for 2 to 4 machine\(s\), and the launcher started 1 \(8 processes, 8 on each\); give torchrun --nnodes=2:4"):
        check_launched_nodes(config("distributed: {strategy: ddp, nodes: '2:4'}").distributed)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    check_launched_nodes(config("distributed: {strategy: ddp, nodes: '2:4'}").distributed)  # 2 nodes of 4: within the range
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_launched_nodes(config("distributed: {strategy: ddp}").distributed)  # nodes left empty: torchrun by hand decides
