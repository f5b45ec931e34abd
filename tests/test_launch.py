"""`trainer launch --to slurm|skypilot`: the files are read by the tools that will run them (Slurm's sbatch, SkyPilot's
task loader) where those are installed, and by bash and YAML always.

sbatch parses a script's #SBATCH options before it asks the controller for an allocation, so with a slurm.conf naming
a controller that is not there, `sbatch --test-only` fails at the allocation for a good script and at the option for a
bad one (`apt-get install slurm-client`). SkyPilot cannot share trainer's environment (its pins, click<8.2 and
uvicorn<0.36, would downgrade what gradio and the API server use), so its loader runs in the Python that
TRAINER_SKYPILOT_PYTHON names (`make skypilot`; `make test` sets it) where `sky` is not importable here.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_trainer, tiny_config

SHIPPED_GPU_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*-gpu.yaml"))
SLURM_CONF = """ClusterName=check
SlurmctldHost=localhost
MessageTimeout=1
TCPTimeout=1
GresTypes=gpu
NodeName=node[1-8] CPUs=64 Gres=gpu:8 State=UNKNOWN
PartitionName=gpu Nodes=node[1-8] Default=YES State=UP
"""
# config.json of the shipped configs' models, as the Hub serves them (the plan reads nothing else): the Hub is not
# reachable from the test machines, so they go into a Hub cache of the test's own, read with HF_HUB_OFFLINE
# The Llama values (hidden, MLP and head sizes, layers, heads, KV heads, vocabulary, rope_scaling, tied embeddings) were
# compared on 2026-12-02 with the published config.json files as copied into public code (e.g. the 1B-Instruct's in
# kevinstephano/thunder_model_blocks hf_llama/llama_config.py) and model tables (oumi's configs/recipes/llama3_1, 8B):
# no difference.
LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
             max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu", torch_dtype="bfloat16",
             bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}
HUB_CONFIGS = {
    "meta-llama/Llama-3.1-8B-Instruct": {**LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                         "tie_word_embeddings": False, "rope_scaling": {"factor": 8.0, **ROPE}},
    "meta-llama/Llama-3.2-1B-Instruct": {**LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "head_dim": 64,
                                         "tie_word_embeddings": True, "rope_scaling": {"factor": 32.0, **ROPE}},
    "meta-llama/Llama-3.2-3B-Instruct": {**LLAMA, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
                                         "head_dim": 128, "tie_word_embeddings": True, "rope_scaling": {"factor": 32.0, **ROPE}},
    # openai/gpt-oss-20b's config.json (transformers 4.55): 24 layers, 32 experts of which 4 per token, experts in MXFP4
    "openai/gpt-oss-20b": {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 200002, "pad_token_id": 199999, "experts_per_token": 4, "num_experts_per_tok": 4, "num_local_experts": 32,
        "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880, "initial_context_length": 4096,
        "initializer_range": 0.02, "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
        "num_attention_heads": 64, "num_hidden_layers": 24, "num_key_value_heads": 8, "output_router_logits": False,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                                           "lm_head"], "quant_method": "mxfp4"},
        "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                                                "rope_type": "yarn", "truncate": False},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False,
        "use_cache": True, "vocab_size": 201088},
}


def sbatch_parses(script: Path, tmp_path: Path) -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm's sbatch is not installed (apt-get install slurm-client)")
    (tmp_path / "slurm.conf").write_text(SLURM_CONF)
    done = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLURM_CONF": str(tmp_path / "slurm.conf")})
    # every option read; only the missing controller stops it
    assert "Unable to contact slurm controller" in done.stderr, done.stderr
    assert "error" not in done.stderr.replace("allocation failure", "") and "unrecognized" not in done.stderr, done.stderr


def skypilot_loads(task_file: Path) -> dict:
    """SkyPilot's own loader (sky.Task.from_yaml): the task as it understood it."""
    probe = ("import json, sys, sky; t = sky.Task.from_yaml(sys.argv[1]); r = next(iter(t.resources)); "
             "print(json.dumps({'name': t.name, 'num_nodes': t.num_nodes, 'accelerators': r.accelerators, 'spot': r.use_spot, "
             "'file_mounts': t.file_mounts, 'storage': sorted(t.storage_mounts), 'run': t.run, 'setup': t.setup}))")
    python = sys.executable if importlib.util.find_spec("sky") else os.environ.get("TRAINER_SKYPILOT_PYTHON")
    if python is None:
        pytest.skip("SkyPilot is not installed here: set TRAINER_SKYPILOT_PYTHON to a Python with it (make skypilot)")
    done = subprocess.run([python, "-c", probe, str(task_file)], capture_output=True, text=True, timeout=300, cwd=task_file.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def bash_parses(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def tiny_two_nodes(tmp_path, tiny_model_dir):
    """The tiny model's config on 2 nodes x 2 processes, with local data: the plan counts its tokens, so it has a cost."""
    config = tiny_config(tmp_path, tiny_model_dir)
    text = yaml.safe_load(config.read_text())
    text["distributed"] = {"strategy": "ddp", "nodes": 2, "num_processes": 2}
    config.write_text(yaml.safe_dump(text))
    return config


def test_slurm_script_for_two_nodes_carries_the_plan_and_requeues(tiny_two_nodes, tmp_path, cli):
    done = cli("launch", "--to", "slurm", "--config", str(tiny_two_nodes), "--gpu", "A100 80GB", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "run.sbatch"
    assert f"Start it: sbatch {script.name}" in done.stderr
    text = script.read_text()
    options = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert options == ["#SBATCH --job-name=run", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=2",
                       "#SBATCH --cpus-per-task=16", "#SBATCH --output=run-%j.out", "#SBATCH --open-mode=append", "#SBATCH --requeue",
                       "#SBATCH --signal=B:USR1@600"]
    assert 'export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}' in text
    assert "export MASTER_PORT=${MASTER_PORT:-29500}" in text
    # every node runs trainer itself, told its rank: its launcher starts the node's processes
    assert ("""srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c 'exec "$0" "$@" --node-rank "$SLURM_NODEID"' "$PYTHON" \\\n"""
            f"    -m trainer --config {tiny_two_nodes} --resume &") in text
    assert "torch.distributed.run" not in text
    assert "trap stop USR1 TERM" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert f"RUN_DIR={tmp_path / 'run'}" in text and 'srun --ntasks-per-node=1 test -e "$RUN_DIR/.slurm-$SLURM_JOB_ID"' in text
    # the plan's time and cost on the 4 GPUs, one line per GPU of the table, each a comment
    cost_lines = [line for line in text.splitlines() if "on 2 nodes x 2 GPUs:" in line and "USD" in line]
    assert len(cost_lines) == 9 and all(line.startswith("#   ") and "USD" in line for line in cost_lines)
    assert "(this file asks for A100 80GB)" in text
    assert os.access(script, os.X_OK)
    bash_parses(script)
    sbatch_parses(script, tmp_path)


def test_the_trap_requeues_after_the_training_stopped(tmp_path):
    """The script's training part, run by bash with Slurm's srun and scontrol stood in for: a TERM (a preemption) while
    training passes SIGTERM on, waits for the training to stop, and requeues the job."""
    from trainer.config import parse_config
    from trainer.launch import LaunchSpec
    from trainer.launch.slurm import sbatch_script

    config = parse_config("model: {name_or_path: org/m}\ndata: {train: org/d}\ntraining: {epochs: 1}\n"
                          "distributed: {strategy: ddp, nodes: 2, num_processes: 1}\n")
    text = sbatch_script(LaunchSpec(config, Path("/c.yaml"), (), Path("/w"), Path("/w/run"), "run", 1, None, (), "python"))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/scontrol.log\n")
    (fake / "srun").write_text("#!/bin/bash\nsleep 30 &\ntrap 'kill $!; echo training stopped by TERM; exit 3' TERM\nwait\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    (tmp_path / "tail.sh").write_text("set -uo pipefail\nSLURM_JOB_ID=42\nPYTHON=python\nRENDEZVOUS=x:1\n" + text[text.index("stopping=0"):])
    started = subprocess.Popen(["bash", str(tmp_path / "tail.sh")], env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    started.send_signal(signal.SIGTERM)
    out, err = started.communicate(timeout=20)
    assert "training stopped by TERM" in out and "requeued: the next start continues with --resume" in err
    assert started.returncode == 3  # trainer's status after a stop, passed on
    assert (tmp_path / "scontrol.log").read_text() == "requeue 42\n"


def test_skypilot_task_uploads_the_local_files_and_mounts_the_run_directory(tiny_two_nodes, tmp_path, cli):
    done = cli("launch", "--to", "skypilot", "--config", str(tiny_two_nodes), "--output", str(tmp_path / "t.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "t.yaml").read_text()
    task = yaml.safe_load(text)
    # the cheapest run on the table's prices per FLOP, where the tiny model fits everywhere (the config is fp32)
    assert task["resources"] == {"accelerators": "H100:2", "use_spot": True} and task["num_nodes"] == 2
    mounts = task["file_mounts"]
    assert mounts["~/trainer-src"] == str(REPO) and mounts["~/trainer-run/config.yaml"] == str(tiny_two_nodes)
    assert mounts["~/trainer-run/files/data-train-data.jsonl"] == str(tmp_path / "data.jsonl")
    assert mounts["~/trainer-run/files/model-name_or_path-" + Path(yaml.safe_load(tiny_two_nodes.read_text())["model"]["name_or_path"]).name]
    assert mounts["/runs"] == {"name": "trainer-run", "mode": "MOUNT_CACHED"}
    assert "secrets" not in task  # a local model: no Hub token to pass
    run = task["run"]
    assert run.rstrip().endswith('--resume \\\n    --node-rank "$SKYPILOT_NODE_RANK"')
    assert 'export MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n 1)"' in run and "export MASTER_PORT=29500" in run
    assert ("--config trainer-run/config.yaml --set data.train=trainer-run/files/data-train-data.jsonl "
            "--set data.validation=trainer-run/files/data-validation-data.jsonl") in run
    assert "--set output.dir=/runs/run --resume" in run
    assert task["setup"].startswith('set -e\npip install "$HOME/trainer-src[gpu]"')
    assert "# `trainer plan` of this run (this file asks for H100 80GB):" in text and "on 2 nodes x 2 GPUs:" in text
    loaded = skypilot_loads(tmp_path / "t.yaml")
    assert loaded["num_nodes"] == 2 and loaded["accelerators"] == {"H100": 2} and loaded["spot"] is True
    assert loaded["storage"] == ["/runs"] and loaded["run"] == run


@pytest.mark.integration
@pytest.mark.parametrize("name", SHIPPED_GPU_CONFIGS)
def test_each_shipped_gpu_config_launches_on_two_nodes(name, tmp_path):
    """Each configs/*-gpu.yaml on 2 nodes (ddp: every shipped GPU config runs with it; qlora cannot shard), both targets,
    read by sbatch and SkyPilot; the plan reads the models' config.json from a Hub cache of the test's own."""
    cache = tmp_path / "hub"
    for repo, settings in HUB_CONFIGS.items():
        snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps(settings))
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    config = str(REPO / "configs" / name)
    sets = ["--set", "distributed.strategy=ddp", "--set", "distributed.nodes=2"]
    slurm = run_trainer("launch", "--to", "slurm", "--config", config, *sets, "-o", str(tmp_path / "job.sbatch"), env=env, cwd=tmp_path)
    assert slurm.returncode == 0, slurm.stderr
    script = (tmp_path / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "--set distributed.num_processes=1" in script and "(this file asks for " in script
    assert "fits: micro-batch" in script  # the plan's GPU table, as comments
    bash_parses(tmp_path / "job.sbatch")
    sbatch_parses(tmp_path / "job.sbatch", tmp_path)
    sky = run_trainer("launch", "--to", "skypilot", "--config", config, *sets, "-o", str(tmp_path / "job.sky.yaml"), env=env, cwd=tmp_path)
    assert sky.returncode == 0, sky.stderr
    task = yaml.safe_load((tmp_path / "job.sky.yaml").read_text())
    assert task["num_nodes"] == 2 and task["secrets"] == {"HF_TOKEN": None}  # gated Llama: the token comes from --secret
    loaded = skypilot_loads(tmp_path / "job.sky.yaml")
    assert loaded["num_nodes"] == 2 and sum(loaded["accelerators"].values()) == 1 and loaded["spot"] is True


def test_elastic_nodes_and_a_given_rendezvous(tiny_two_nodes, tmp_path, cli):
    sets = ["--set", "distributed.nodes=2:4", "--set", "distributed.rendezvous=10.0.0.5", "--set", "distributed.max_restarts=2"]
    assert cli("launch", "--to", "slurm", "--config", str(tiny_two_nodes), *sets, "-o", "e.sbatch", cwd=tmp_path).returncode == 0
    script = (tmp_path / "e.sbatch").read_text()
    assert "#SBATCH --nodes=2-4" in script and "MASTER_ADDR" not in script  # the config says where the nodes meet
    assert "--set distributed.nodes=2:4 --set distributed.rendezvous=10.0.0.5 --set distributed.max_restarts=2" in script
    sbatch_parses(tmp_path / "e.sbatch", tmp_path)
    assert cli("launch", "--to", "skypilot", "--config", str(tiny_two_nodes), *sets, "-o", "e.yaml", cwd=tmp_path).returncode == 0
    task = yaml.safe_load((tmp_path / "e.yaml").read_text())
    assert task["num_nodes"] == 4 and task["resources"]["job_recovery"] == {"max_restarts_on_errors": 2}
    assert "--set distributed.rendezvous=10.0.0.5" in task["run"] and "MASTER_ADDR" not in task["run"]
    assert skypilot_loads(tmp_path / "e.yaml")["num_nodes"] == 4


def test_what_cannot_be_launched_is_said(tiny_two_nodes, tmp_path, cli):
    one = cli("launch", "--to", "slurm", "--config", str(tiny_two_nodes), "--set", "distributed.nodes=1", cwd=tmp_path)
    assert one.returncode == 2 and "a launch file is for several machines; set distributed.nodes" in one.stderr
    unknown = cli("launch", "--to", "skypilot", "--config", str(tiny_two_nodes), "--gpu", "B300", cwd=tmp_path)
    assert unknown.returncode == 2 and "--gpu B300: not in the GPU table; give one of: T4, L4," in unknown.stderr
    assert not list(tmp_path.glob("*.sky.yaml")) and not list(tmp_path.glob("*.sbatch"))


def test_bf16_runs_are_not_planned_on_gpus_without_it(tiny_two_nodes, tmp_path, cli):
    """A T4 has no bf16: the cheapest per FLOP that fits and computes in bf16 is chosen instead."""
    done = cli("launch", "--to", "skypilot", "--config", str(tiny_two_nodes), "--set", "training.precision=bf16",
               "--gpus", str(_table(tmp_path)), "-o", "-", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["resources"]["accelerators"] == "L4:2"


def _table(tmp_path: Path) -> Path:
    table = tmp_path / "gpus.yaml"
    table.write_text("prices_taken: '2026-12'\ncurrency: USD\nutilisation: 0.35\ngpus:\n"
                     "  - {name: T4, memory_gib: 16, tflops: 65, bf16: false, price_per_hour: 0.10}\n"
                     "  - {name: L4, memory_gib: 24, tflops: 121, bf16: true, price_per_hour: 0.80}\n"
                     "  - {name: H100 80GB, memory_gib: 80, tflops: 989, bf16: true, price_per_hour: 9.00, skypilot: H100}\n")
    return table


def test_plan_prints_the_cost_on_every_gpu_of_the_run(tiny_two_nodes, cli):
    plan = json.loads(cli("plan", "--config", str(tiny_two_nodes), "--json").stdout)
    assert plan["gpus"]["nodes"] == 2 and plan["gpus"]["gpus_per_node"] == 2
    for row in plan["gpus"]["rows"]:
        assert row["run_hours"] == pytest.approx(row["hours"] / 4) and row["run_cost"] == pytest.approx(row["cost"])
    text = cli("plan", "--config", str(tiny_two_nodes)).stdout
    assert "on 2 nodes x 2 GPUs: the time shared out as if scaling were perfect" in text
