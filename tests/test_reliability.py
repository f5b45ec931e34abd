"""Faults: SIGKILL at any moment, a full disk, a read-only output, and secrets that must never be written."""
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_trainer, tiny_config
from trainer.checkpoint import STATE_FILE, complete_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _adapter(run: Path) -> dict:
    return load_file(run / "model" / "adapter_model.safetensors")


def _check_every_checkpoint_loads(run: Path) -> int:
    found = complete_checkpoints(run)
    for folder in found:
        load_file(folder / "trainable.safetensors")
        torch.load(folder / "optimizer.pt", weights_only=False)
        json.loads((folder / STATE_FILE).read_text())
    return len(found)


def test_kill_9_soak_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    """At least 10 SIGKILLs at random moments (half of them while a checkpoint is being written), a resume after
    each; the finished adapter must equal, bit for bit, that of a run never interrupted (same seed, fp32, CPU:
    the resumed run replays the same batches with the same RNG state, so the arithmetic is the same)."""
    steps = 60
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = tiny_config(reference_dir, tiny_model_dir, max_steps=steps, save_every=1, keep_last=3, learning_rate=0.003)
    assert run_trainer("--config", str(reference)).returncode == 0

    soak_dir = tmp_path / "soak"
    soak_dir.mkdir()
    config = tiny_config(soak_dir, tiny_model_dir, max_steps=steps, save_every=1, keep_last=3, learning_rate=0.003)
    run = soak_dir / "run"
    checkpoints = run / "checkpoints"
    rng = random.Random(7)
    kills, during_save, starts = 0, 0, 0
    while True:
        starts += 1
        assert starts < 60, "the soak did not finish"
        proc = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--resume"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        def saving() -> bool:  # this process is writing a checkpoint (its temporary folder carries its pid)
            try:
                return any(p.name.startswith(".tmp-") and p.name.endswith(f"-{proc.pid}") for p in checkpoints.iterdir())
            except FileNotFoundError:
                return False

        def newest() -> int:
            return max((int(p.name.split("-")[1]) for p in complete_checkpoints(run)), default=0)

        if kills < 10:
            aim_at_save = kills % 2 == 0
            start_step = newest()
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if aim_at_save and saving():
                    break
                if not aim_at_save and newest() > start_step:  # training is under way: kill at a random moment
                    time.sleep(rng.uniform(0.0, 0.4))
                    break
                time.sleep(0.0005 if aim_at_save else 0.005)
            if proc.poll() is None:
                was_saving = saving()
                proc.kill()
                proc.wait()
                kills += 1
                during_save += was_saving
                _check_every_checkpoint_loads(run)
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        if (run / "summary.json").is_file():
            break
    print(f"\nkill -9 soak: {kills} kills ({during_save} during a checkpoint write), {starts} starts, {steps} steps")
    assert kills >= 10 and during_save >= 3, (kills, during_save)
    assert json.loads((run / "summary.json").read_text())["steps"] == steps
    assert _check_every_checkpoint_loads(run) >= 1
    assert not any(p.name.startswith(".tmp") for p in checkpoints.iterdir())
    expected, got = _adapter(reference_dir / "run"), _adapter(run)
    assert sorted(expected) == sorted(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs: room for the run's first checkpoints, not for many more."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test (needs root): {done.stderr}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_fails_clearly_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, small_disk):
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=400, save_every=1, keep_last=50, **{"output.dir": str(small_disk / "run")})
    result = run_trainer("--config", str(config), timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "No space left" in result.stderr and str(small_disk / "run") in result.stderr
    assert _check_every_checkpoint_loads(small_disk / "run") >= 1
    assert not any(p.name.startswith(".tmp") for p in (small_disk / "run" / "checkpoints").iterdir())


def test_a_read_only_output_fails_clearly_before_training(tmp_path, tiny_model_dir):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a read-only tmpfs (needs root): {done.stderr}")
    try:
        config = tiny_config(tmp_path, tiny_model_dir, max_steps=2, **{"output.dir": str(mount / "run")})
        result = run_trainer("--config", str(config))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert str(mount / "run") in result.stderr and "read-only" in result.stderr.lower()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


CANARY = "hf_CANARY_d0n0tL34kM3_5c1f2e"


def test_the_token_is_written_nowhere(tmp_path, tiny_model_dir):
    """HF_TOKEN set to a canary through training, evaluation, AutoTrain export and the UI's YAML download."""
    env = {"HF_TOKEN": CANARY}
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=3, **{"evaluation.after_training": True, "evaluation.max_examples": 2,
                                                                     "evaluation.max_new_tokens": 4})
    outputs = []
    for args in (["--config", str(config)], ["eval", "--config", str(config)],
                 ["export", "--to", "autotrain", "--config", str(config), "--dir", str(tmp_path / "export")],
                 ["data", "--config", str(config)], ["validate", "--config", str(config), "--print"]):
        result = run_trainer(*args, env=env, timeout=600)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        outputs += [result.stdout, result.stderr]

    from ui.app import App
    from ui.workspace import Workspace

    os.environ["HF_TOKEN"] = CANARY
    try:
        app = App(Workspace(tmp_path / "ui-work", sandbox=False))
        values = app.load_yaml(str(config))
        preview, problems, runnable = app.check(values)
        assert runnable is not None, problems
        outputs.append(preview)
    finally:
        del os.environ["HF_TOKEN"]

    leaks = [text for text in outputs if CANARY in text]
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            if CANARY.encode() in path.read_bytes():
                leaks.append(str(path))
    assert leaks == []
