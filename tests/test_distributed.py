"""DDP, FSDP and DeepSpeed ZeRO for real on the CPU: two gloo processes train like one process with the same global batch."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_trainer, tiny_config
from trainer.checkpoint import complete_checkpoints
from trainer.errors import EXIT_STOPPED

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def with_distributed(config, **section):
    """The config file with a distributed section added."""
    import yaml

    data = yaml.safe_load(config.read_text())
    data["distributed"] = section
    config.write_text(yaml.safe_dump(data))
    return config


def one_and_two_processes(tmp_path, model_dir, strategy: str, zero_stage: int | None = None, **training):
    """The same run in one process (micro-batches of 2, two per step) and, by the YAML, in two (one each per step)."""
    one = tmp_path / "one"
    one.mkdir()
    single = run_trainer("--config", str(tiny_config(one, model_dir, batch_size=2, gradient_accumulation=2, **training)), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    two = tmp_path / "two"
    two.mkdir()
    config = with_distributed(tiny_config(two, model_dir, batch_size=2, gradient_accumulation=1, **training),
                              strategy=strategy, num_processes=2, **({"zero_stage": zero_stage} if zero_stage else {}))
    double = run_trainer("--config", str(config), timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    assert f"Starting {strategy} training" in double.stderr
    return one / "run", two / "run", double


def trajectory(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def eval_losses(run_dir):
    return [r["eval_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]


def assert_same_weights(single: dict, sharded: dict) -> None:
    """Whole weights (a shard would be half the rows), equal to one process's.

    Adam divides by the root of tiny second moments, so float32 rounding of the reduced gradients reaches the weights
    at ~1e-4 after 6 steps of lr 0.01 (measured max 7.6e-5); a shard or a stale copy is off by ~1e-2.
    """
    assert sorted(single) == sorted(sharded)
    for name, value in single.items():
        assert sharded[name].shape == value.shape and torch.allclose(sharded[name], value, atol=2e-4), name


def cut_after_step_4(tmp_path, model_dir, **distributed):
    """A 2-process run of 8 steps with checkpoints every 2, then its later checkpoints and model removed: as if it
    died after step 4. Returns the config, the run directory, the unbroken run's losses and its adapter's bytes."""
    import shutil

    config = tiny_config(tmp_path, model_dir, max_steps=8, batch_size=2, save_every=2, keep_last=10, lora={"dropout": 0.0})
    config = with_distributed(config, num_processes=2, **distributed)
    first = run_trainer("--config", str(config), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    uninterrupted, final = trajectory(run), (run / "model" / "adapter_model.safetensors").read_bytes()
    for later in ("step-6", "step-8"):
        shutil.rmtree(run / "checkpoints" / later)
    shutil.rmtree(run / "model")
    return config, run, uninterrupted, final


def assert_resumes_exactly(config, run, uninterrupted, final) -> None:
    resumed = run_trainer("--config", str(config), "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr and "(step 4 of 8)" in resumed.stderr
    assert trajectory(run)[4:] == pytest.approx(uninterrupted[4:], abs=1e-6)
    assert (run / "model" / "adapter_model.safetensors").read_bytes() == final


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
    one, two, result = one_and_two_processes(tmp_path, tiny_model_dir, "ddp", max_steps=5, learning_rate=0.01, lora={"dropout": 0.0})
    assert result.stdout.count("Run directory:") == 1  # reported once, by the main process
    assert trajectory(two) == pytest.approx(trajectory(one), abs=1e-5)


def test_fsdp_shards_trains_like_one_process_and_saves_whole_weights(tmp_path, tiny_model_dir):
    """fsdp: each process holds half of every weight; the losses, checkpoints and saved adapter are the single process's."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    one, two, _ = one_and_two_processes(tmp_path, tiny_model_dir, "fsdp", max_steps=6, learning_rate=0.01, lora={"dropout": 0.0},
                                        **{"output.merge_adapter": True})
    assert trajectory(two) == pytest.approx(trajectory(one), abs=1e-5)
    assert eval_losses(two) == pytest.approx(eval_losses(one), abs=1e-5)  # 3 validation batches over 2 processes: all counted once
    # the checkpoint and the adapter hold whole weights, equal to one process's
    assert_same_weights(load_file(one / "model" / "adapter_model.safetensors"), load_file(two / "model" / "adapter_model.safetensors"))
    step = load_file(two / "checkpoints" / "step-6" / "trainable.safetensors")
    assert all(step[k].shape == v.shape for k, v in load_file(one / "checkpoints" / "step-6" / "trainable.safetensors").items())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert PeftModel.from_pretrained(base, two / "model") is not None
    assert AutoModelForCausalLM.from_pretrained(two / "merged") is not None


def test_fsdp_resume_continues_exactly(tmp_path, tiny_model_dir):
    """A sharded run that died after step 4 resumes from the gathered checkpoint and ends where an unbroken one ends."""
    assert_resumes_exactly(*cut_after_step_4(tmp_path, tiny_model_dir, strategy="fsdp"))


def test_fsdp_full_fine_tuning_saves_a_whole_model(tmp_path, tiny_model_dir):
    """method: full under fsdp: every weight is sharded and trained; the saved model is whole and loads."""
    from transformers import AutoModelForCausalLM

    one, two, _ = one_and_two_processes(tmp_path, tiny_model_dir, "fsdp", method="full", max_steps=3, learning_rate=0.001)
    assert trajectory(two) == pytest.approx(trajectory(one), abs=1e-5)
    assert_same_weights(AutoModelForCausalLM.from_pretrained(one / "model").state_dict(),
                        AutoModelForCausalLM.from_pretrained(two / "model").state_dict())


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_like_one_process_and_saves_whole_weights(tmp_path, tiny_model_dir, stage):
    """deepspeed: the engine shards the optimizer state (and at ZeRO-3 the weights); losses, the saved adapter and the
    merged model are the single process's, and each checkpoint holds DeepSpeed's shards beside the whole weights."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    one, two, result = one_and_two_processes(tmp_path, tiny_model_dir, "deepspeed", zero_stage=stage, max_steps=6,
                                             learning_rate=0.01, lora={"dropout": 0.0}, **{"output.merge_adapter": True})
    # ZeRO-3 builds the model partitioned (no process loads it whole); the counts are of whole weights all the same
    assert ("the weights were built partitioned" in result.stderr) == (stage == 3)
    assert "Method lora: 32,768 trainable of 120,640 parameters" in result.stderr
    assert trajectory(two) == pytest.approx(trajectory(one), abs=1e-5)
    assert eval_losses(two) == pytest.approx(eval_losses(one), abs=1e-5)
    assert_same_weights(load_file(one / "model" / "adapter_model.safetensors"), load_file(two / "model" / "adapter_model.safetensors"))
    checkpoint = two / "checkpoints" / "step-6"
    shards = sorted(p.name for p in (checkpoint / "zero" / "state").iterdir())
    assert [n for n in shards if "optim_states" in n] == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    whole = load_file(one / "checkpoints" / "step-6" / "trainable.safetensors")
    assert {k: v.shape for k, v in load_file(checkpoint / "trainable.safetensors").items()} == {k: v.shape for k, v in whole.items()}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert PeftModel.from_pretrained(base, two / "model") is not None
    assert AutoModelForCausalLM.from_pretrained(two / "merged") is not None


def test_deepspeed_resume_continues_exactly_and_only_as_deepspeed(tmp_path, tiny_model_dir):
    """A ZeRO-3 run cut after step 4 resumes from DeepSpeed's shards and ends where an unbroken one ends; resuming it
    as another strategy or with another number of processes is refused with what to set."""
    cut = cut_after_step_4(tmp_path, tiny_model_dir, strategy="deepspeed", zero_stage=3)
    config = cut[0]
    for change, says in [("distributed.strategy=ddp", "was written by a deepspeed run"),
                         ("distributed.num_processes=3", "set distributed.num_processes: 2 to resume it")]:
        refused = run_trainer("--config", str(config), "--resume", "--set", change, timeout=600)
        assert refused.returncode == 2 and refused.stderr.count(says) == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert_resumes_exactly(*cut)


def test_deepspeed_early_stopping_ends_with_the_best_checkpoint(tmp_path, tiny_model_dir):
    """Early stopping reads the best checkpoint back through DeepSpeed's engine: the saved adapter is its weights."""
    from safetensors.torch import load_file

    config = tiny_config(tmp_path, tiny_model_dir, max_steps=40, batch_size=2, learning_rate=0.5, eval_every=1,
                         early_stopping={"patience": 1}, lora={"dropout": 0.0})
    config = with_distributed(config, strategy="deepspeed", zero_stage=3, num_processes=2)
    result = run_trainer("--config", str(config), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("early stopping at step") == 1, result.stderr[-3000:]  # said by the main process
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["best_step"] < summary["steps"]
    best = load_file(run / "checkpoints" / "best" / "trainable.safetensors")
    saved = load_file(run / "model" / "adapter_model.safetensors")
    assert len(saved) == len(best)
    for name, value in best.items():  # the checkpoint names the adapter ("default"), the saved file does not
        assert torch.equal(saved[name.replace(".default", "")], value), name


def test_deepspeed_full_fine_tuning_saves_a_whole_model(tmp_path, tiny_model_dir):
    """method: full under ZeRO-3: every weight is partitioned and trained; the saved model is whole and loads."""
    from transformers import AutoModelForCausalLM

    one, two, _ = one_and_two_processes(tmp_path, tiny_model_dir, "deepspeed", zero_stage=3, method="full", max_steps=3,
                                        learning_rate=0.001)
    assert trajectory(two) == pytest.approx(trajectory(one), abs=1e-5)
    assert_same_weights(AutoModelForCausalLM.from_pretrained(one / "model").state_dict(),
                        AutoModelForCausalLM.from_pretrained(two / "model").state_dict())


@pytest.mark.parametrize("strategy, how", [("ddp", "SIGTERM to trainer"), ("ddp", "Ctrl-C to the terminal's group"),
                                           ("deepspeed", "SIGTERM to trainer")])
def test_a_stop_checkpoints_every_process_together_and_resumes(tmp_path, tiny_model_dir, strategy, how):
    """SIGTERM to `trainer` (the UI's Stop) or SIGINT to the whole group (Ctrl-C): both processes stop after the
    same step, one checkpoint is written, exit status 3 (EXIT_STOPPED) and a message, no traceback, no process left;
    --resume ends it."""
    import os
    import signal
    import time

    config = tiny_config(tmp_path, tiny_model_dir, max_steps=3000, batch_size=2, learning_rate=0.0001)
    config = with_distributed(config, strategy=strategy, num_processes=2)
    child = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 8):
        time.sleep(0.2)
    if how.startswith("SIGTERM"):
        child.send_signal(signal.SIGTERM)
    else:
        os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == EXIT_STOPPED, err[-3000:]
    assert "Continue with the same command plus --resume" in err and "Traceback" not in err, err[-3000:]
    assert err.count("stopping after this step") == 1 and err.count("Continue with the same command") == 1  # said once, by the main process
    saved = complete_checkpoints(tmp_path / "run")
    assert saved
    stopped_at = int(saved[-1].name.split("-")[1])
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True).stdout.split()
    assert left == [], "processes left running: " + " ".join(left)
    resumed = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config), "--resume", "--set",
                              f"training.max_steps={stopped_at + 2}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {stopped_at} of {stopped_at + 2})" in resumed.stderr
