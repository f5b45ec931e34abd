"""Several nodes for real, on this machine: two launchers (`trainer --config x.yaml --node-rank N`), one CPU process
each, meeting at a c10d rendezvous on localhost over gloo, train like one node of two processes; a stop on one node
stops both after a checkpoint, and a node killed outright comes back and the run ends as an unbroken one."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_trainer, tiny_config
from test_distributed import rounding, trajectory, with_distributed
from trainer.checkpoint import complete_checkpoints
from trainer.errors import EXIT_STOPPED

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STEPS = 10  # with a checkpoint every 2: a stop or a kill after a few steps leaves some to resume


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_node_config(folder, model_dir, strategy="ddp", steps=STEPS, **distributed):
    """The tiny model on 2 nodes x 1 process (micro-batches of 2: 4 examples a step, as one node of 2 processes)."""
    folder.mkdir(exist_ok=True)
    config = tiny_config(folder, model_dir, max_steps=steps, batch_size=2, save_every=2, keep_last=10, lora={"dropout": 0.0})
    return with_distributed(config, strategy=strategy, num_processes=1, nodes=2, rendezvous=f"127.0.0.1:{free_port()}", **distributed)


def start_node(config, rank: int, *extra: str, tag: str = "") -> subprocess.Popen:
    """One node's launcher, as a user starts it on each machine; its output goes to files beside the config."""
    log = config.parent / f"node{rank}{tag}"
    return subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--node-rank", str(rank), *extra], cwd=REPO,
                            stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"), text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(*nodes: subprocess.Popen, timeout: float = 600) -> list[int]:
    return [node.wait(timeout=timeout) for node in nodes]


def errors(config, tag: str = "") -> str:
    return "\n".join(f"--- node {rank}:\n" + (config.parent / f"node{rank}{tag}.err").read_text()[-2500:] for rank in (0, 1))


def wait_for_lines(run_dir, count: int, nodes, timeout: float = 300) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        assert all(node.poll() is None for node in nodes), "a node ended before it was stopped"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, tiny_model_dir):
    """The ddp run on two nodes, uninterrupted: the run directory the stop and kill tests must end like."""
    config = two_node_config(tmp_path_factory.mktemp("unbroken"), tiny_model_dir)
    codes = finish(start_node(config, 0), start_node(config, 1))
    assert codes == [0, 0], errors(config)
    return config.parent / "run"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_train_like_one_node_of_two_processes(tmp_path, tiny_model_dir, strategy, unbroken):
    """Two nodes x 1 process and one node x 2 processes: the same losses at every step; rank 0 of node 0's run writes
    the one run directory (output said once)."""
    if strategy == "ddp":
        two_nodes = unbroken
    else:
        config = two_node_config(tmp_path / "nodes", tiny_model_dir, strategy, steps=4)
        assert finish(start_node(config, 0), start_node(config, 1)) == [0, 0], errors(config)
        two_nodes = config.parent / "run"
        assert [(config.parent / f"node{rank}.out").read_text().count("Run directory:") for rank in (0, 1)].count(1) == 1
    one = tmp_path / "one"
    one.mkdir()
    steps = len(trajectory(two_nodes))
    config = with_distributed(tiny_config(one, tiny_model_dir, max_steps=steps, batch_size=2, lora={"dropout": 0.0}),
                              strategy=strategy, num_processes=2)
    single = run_trainer("--config", str(config), env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    assert trajectory(two_nodes) == pytest.approx(trajectory(one / "run"), abs=rounding(one / "run")[0])


def test_a_stop_on_one_node_stops_both_and_resume_continues_exactly(tmp_path, tiny_model_dir, unbroken):
    """SIGTERM to one node's launcher (a preemption, the scheduler's stop): the processes of both nodes agree on a
    step, one checkpoint is written, both launchers exit 3 with no traceback; --resume on both ends the run with the
    unbroken run's losses and adapter."""
    config = two_node_config(tmp_path, tiny_model_dir)
    nodes = start_node(config, 0), start_node(config, 1)
    run = tmp_path / "run"
    wait_for_lines(run, 3, nodes)
    nodes[1].send_signal(signal.SIGTERM)
    assert finish(*nodes, timeout=120) == [EXIT_STOPPED, EXIT_STOPPED], errors(config)
    said = errors(config)
    assert "Traceback" not in said and said.count("Continue with the same command plus --resume") == 1, said
    stopped_at = int(complete_checkpoints(run)[-1].name.split("-")[1])
    assert 0 < stopped_at < STEPS
    assert finish(start_node(config, 0, "--resume", tag="b"), start_node(config, 1, "--resume", tag="b")) == [0, 0], errors(config, "b")
    assert f"(step {stopped_at} of {STEPS})" in (tmp_path / "node0b.err").read_text() + (tmp_path / "node1b.err").read_text()
    assert trajectory(run) == trajectory(unbroken)
    assert (run / "model" / "adapter_model.safetensors").read_bytes() == (unbroken / "model" / "adapter_model.safetensors").read_bytes()


def test_a_node_killed_outright_comes_back_and_the_run_ends_as_an_unbroken_one(tmp_path, tiny_model_dir, unbroken):
    """kill -9 of node 1's launcher (its process dies with it, as on a lost machine): node 0's process fails at its next
    collective, its agent (max_restarts: 1) waits at the rendezvous; node 1 started again with the same command joins,
    both resume from the last checkpoint, and the run ends with the unbroken run's adapter."""
    config = two_node_config(tmp_path, tiny_model_dir, max_restarts=1)
    first, second = start_node(config, 0), start_node(config, 1)
    run = tmp_path / "run"
    wait_for_lines(run, 5, (first, second))
    second.kill()
    second.wait()
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", f"{config} --node-rank 1"], capture_output=True, text=True).stdout.split()
    assert left == [], "node 1's process outlived its launcher"
    again = start_node(config, 1, tag="b")
    assert finish(first, again) == [0, 0], errors(config) + errors(config, "b")[-3000:]
    assert "Resuming from" in (tmp_path / "node0.err").read_text() + (tmp_path / "node1b.err").read_text()
    assert (run / "model" / "adapter_model.safetensors").read_bytes() == (unbroken / "model" / "adapter_model.safetensors").read_bytes()
