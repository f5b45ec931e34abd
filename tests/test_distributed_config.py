"""The distributed section: validation, what the launcher of each node is told, and the DeepSpeed settings."""
import pytest

from trainer.config import parse_config
from trainer.distributed import deepspeed_config, ended_as_asked, node_launch, num_processes, shard_model, threads_per_process
from trainer.errors import UserError


def config(extra: str = "", method: str = "lora", optimizer: str = "adamw"):
    return parse_config(f"model: {{name_or_path: org/m}}\ndata: {{train: x.jsonl}}\n"
                        f"training: {{method: {method}, optimizer: {optimizer}, epochs: 1, batch_size: 3, gradient_accumulation: 2, "
                        "max_grad_norm: 0.7}\n" + extra, check_files=False)


def test_one_machine_launches_its_processes_at_a_rendezvous_of_its_own():
    launch = node_launch(config("distributed: {strategy: fsdp, num_processes: 4}"), 0, None, "x.yaml")
    assert (launch.processes, launch.nodes, launch.endpoint, launch.node_rank, launch.max_restarts) == (4, (1, 1), "localhost:0", 0, 0)
    assert node_launch(config("distributed: {strategy: ddp}"), 8, None, "x.yaml").processes == 8  # one per GPU


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


def test_cpu_processes_share_the_cores(monkeypatch):
    """torchrun would give each process one thread; the launcher shares the machine's cores out instead."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert (threads_per_process(3), threads_per_process(1), threads_per_process(16)) == (2, 8, 1)  # rounded down, at least 1


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


def test_each_node_is_told_its_rank_the_rendezvous_and_the_elastic_range(monkeypatch):
    for name in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    fixed = config("distributed: {strategy: ddp, nodes: 2, num_processes: 8, rendezvous: head, max_restarts: 1}\noutput: {dir: /shared/run}")
    first, second = node_launch(fixed, 8, 0, "x.yaml"), node_launch(fixed, 8, 1, "x.yaml")
    assert (first.nodes, first.endpoint, first.max_restarts, first.processes) == ((2, 2), "head:29500", 1, 8)
    assert (first.node_rank, second.node_rank) == (0, 1) and first.run_id == second.run_id  # from the run directory they share
    other = config("distributed: {strategy: ddp, nodes: 2, num_processes: 8, rendezvous: head}\noutput: {dir: /shared/other}")
    assert node_launch(other, 8, 0, "x.yaml").run_id != first.run_id  # another run meets apart, at the same address
    # Slurm's and SkyPilot's files export MASTER_ADDR (the first node); torchrun by hand gives NODE_RANK
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.7")
    monkeypatch.setenv("NODE_RANK", "3")
    elastic = node_launch(config("distributed: {strategy: ddp, nodes: '2:4', num_processes: 1}"), 0, None, "x.yaml")
    assert (elastic.nodes, elastic.endpoint, elastic.node_rank) == ((2, 4), "10.0.0.7:29500", 3)


def test_trainer_statuses_end_a_run_and_failures_restart_it():
    """What the launcher's agent does when a node's processes exit: trainer's own statuses end the run (a restart
    would stop, fail on the same input or ignore a second Ctrl-C), anything else is a failure to restart from."""
    assert ended_as_asked({3}) == 3 and ended_as_asked({3, 2}) == 2 and ended_as_asked({130, 3}) == 130
    assert ended_as_asked({3, 1}) is None and ended_as_asked({-9}) is None and ended_as_asked(set()) is None


@pytest.mark.parametrize("rank, env, says", [
    (None, {"MASTER_ADDR": "head"}, "needs which node this is (--node-rank N, or NODE_RANK in the environment"),
    (0, {}, "needs where the nodes meet (distributed.rendezvous: host:port of the first node, or MASTER_ADDR"),
    (2, {"MASTER_ADDR": "head"}, "needs a node rank below 2 (--node-rank 2 was given; distributed.nodes is 2)"),
])
def test_a_node_missing_its_rank_or_rendezvous_is_refused(monkeypatch, rank, env, says):
    for name in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as raised:
        node_launch(config("distributed: {strategy: ddp, nodes: 2, num_processes: 1}"), 0, rank, "x.yaml")
    assert says in raised.value.render() and "nothing was run" in raised.value.render()


def test_several_nodes_outside_a_launcher_refuse_and_say_how_to_launch(tmp_path, monkeypatch, capsys):
    from trainer.cli import main

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "x.yaml").write_text("model: {name_or_path: org/m}\ndata: {train: x.jsonl}\ntraining: {epochs: 1}\n"
                                     "distributed: {strategy: ddp, nodes: 2, num_processes: 4}\noutput: {dir: run}\n")
    assert main(["--config", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "nothing was run" in err and "trainer launch --to slurm --config x.yaml" in err
    assert "trainer --config x.yaml --node-rank N --set distributed.rendezvous=FIRST_NODE:29500" in err and "Traceback" not in err
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
