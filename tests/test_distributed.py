"""DDP for real on the CPU: two gloo processes train like one process with the same global batch."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, tiny_config

pytestmark = pytest.mark.slow


def trajectory(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_processes_match_one(tmp_path, tiny_model_dir):
    one = tmp_path / "one"
    one.mkdir()
    # one process: micro-batches of 2, two per step (4 examples per step)
    config = tiny_config(one, tiny_model_dir, max_steps=6, batch_size=2, gradient_accumulation=2, learning_rate=0.01, lora={"dropout": 0.0})
    single = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]

    two = tmp_path / "two"
    two.mkdir()
    # two processes: micro-batches of 2 each, one per step: the same 4 examples per step
    config = tiny_config(two, tiny_model_dir, max_steps=6, batch_size=2, gradient_accumulation=1, learning_rate=0.01, lora={"dropout": 0.0})
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
              "-m", "trainer", "--config", str(config)]
    double = subprocess.run(launch, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]

    expected, got = trajectory(one / "run"), trajectory(two / "run")
    assert len(expected) == len(got) == 6
    # the same arithmetic in a different order (all-reduce of gradients): equal to float32 rounding
    assert got == pytest.approx(expected, abs=1e-5)
    assert sorted(p.name for p in (two / "run").iterdir()) == sorted(p.name for p in (one / "run").iterdir())


def test_the_yaml_alone_launches_two_processes_that_match_one(tmp_path, tiny_model_dir):
    """distributed: {strategy: ddp, num_processes: 2} makes `trainer --config` re-launch itself (CPU: gloo)."""
    import yaml

    one = tmp_path / "one"
    one.mkdir()
    config = tiny_config(one, tiny_model_dir, max_steps=5, batch_size=2, gradient_accumulation=2, learning_rate=0.01, lora={"dropout": 0.0})
    assert subprocess.run([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO, capture_output=True).returncode == 0

    two = tmp_path / "two"
    two.mkdir()
    config = tiny_config(two, tiny_model_dir, max_steps=5, batch_size=2, gradient_accumulation=1, learning_rate=0.01, lora={"dropout": 0.0})
    data = yaml.safe_load(config.read_text())
    data["distributed"] = {"strategy": "ddp", "num_processes": 2}
    config.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting ddp training" in result.stderr
    assert result.stdout.count("Run directory:") == 1  # reported once, by the main process
    assert trajectory(two / "run") == pytest.approx(trajectory(one / "run"), abs=1e-5)
