"""DDP, FSDP and DeepSpeed ZeRO for real on the CPU: two gloo processes train like one process with the same global batch."""
import json
import os
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


@pytest.fixture(scope="session")
def one_process(tmp_path_factory, tiny_model_dir):
    """one_process(**training): the single-process run of one_and_two_processes (micro-batches of 2, two per step),
    trained once per session for each set of settings: the fsdp and deepspeed tests compare against the same runs.
    Tests read it and never write into it."""
    runs = {}

    def run(**training):
        key = json.dumps(training, sort_keys=True)
        if key not in runs:
            one = tmp_path_factory.mktemp("one")
            single = run_trainer("--config", str(tiny_config(one, tiny_model_dir, batch_size=2, gradient_accumulation=2, **training)),
                                 timeout=600)
            assert single.returncode == 0, single.stderr[-3000:]
            runs[key] = one / "run"
        return runs[key]

    return run


def one_and_two_processes(one_process, tmp_path, model_dir, strategy: str, zero_stage: int | None = None, **training):
    """The same run in one process (micro-batches of 2, two per step) and, by the YAML, in two (one each per step)."""
    one = one_process(**training)
    two = tmp_path / "two"
    two.mkdir()
    config = with_distributed(tiny_config(two, model_dir, batch_size=2, gradient_accumulation=1, **training),
                              strategy=strategy, num_processes=2, **({"zero_stage": zero_stage} if zero_stage else {}))
    double = run_trainer("--config", str(config), timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    assert f"Starting {strategy} training" in double.stderr
    return one, two / "run", double


def trajectory(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def eval_losses(run_dir):
    return [r["eval_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]


# How far two runs that compute the same thing in another order (the gradients all-reduced) may drift apart, in
# multiples of the machine epsilon of the precision they computed in. Measured on the tiny model, float32, 6 steps
# of lr 0.01: losses 4e-7 apart with AVX-512 kernels, 1.1e-6 with AVX2's (ATEN_CPU_CAPABILITY=avx2, as on an AMD EPYC
# without AVX-512); the weights' root mean square difference 2.9e-5 and 2.4e-4 of lr (Adam divides by the root of
# tiny second moments, so a few elements drift far more: 3e-3 and 2.7e-2 of lr, which a per-element bound trips on).
LOSS_ROUNDING = 100  # x eps, absolute: 1.2e-5 in float32
WEIGHT_ROUNDING = 3000  # x eps x lr per step, root mean square: 3.6e-4 of lr per step in float32


def computed_in(run_dir) -> str:
    """The mixed precision a run computed in on this CPU ("no": float32; auto is bf16 where the CPU computes in it)."""
    from trainer.config import load_config
    from trainer.models import mixed_precision

    return mixed_precision(load_config(str(run_dir / "config.yaml")), "cpu")


def rounding(run_dir) -> tuple[float, float]:
    """(loss tolerance, weights' root-mean-square tolerance) of a run, from the precision it computed in.

    A stale copy or a missed step is 0.14 of lr per step away (rms); in bf16 (eps 2^-7) rounding alone moves the weights
    that far, so these tests train in fp32 (tiny_config) on every CPU, whether it computes in bf16 or not."""
    from trainer.config import load_config

    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[computed_in(run_dir)]
    eps, t = torch.finfo(dtype).eps, load_config(str(run_dir / "config.yaml")).training
    return LOSS_ROUNDING * eps, WEIGHT_ROUNDING * eps * t.learning_rate * t.max_steps


def assert_same_weights(single: dict, sharded: dict, run_dir) -> None:
    """Whole weights (a shard would be half the rows), equal to one process's up to the rounding of the precision
    the runs computed in (run_dir: either run)."""
    assert sorted(single) == sorted(sharded)
    for name, value in single.items():
        assert sharded[name].shape == value.shape, name
    squares = sum(float(((sharded[n].double() - v.double()) ** 2).sum()) for n, v in single.items())
    rms = (squares / sum(v.numel() for v in single.values())) ** 0.5
    assert rms <= rounding(run_dir)[1], f"the weights differ by {rms:.2e} (root mean square), rounding allows {rounding(run_dir)[1]:.2e}"


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
    assert got == pytest.approx(expected, abs=rounding(one / "run")[0])
    assert sorted(p.name for p in (two / "run").iterdir()) == sorted(p.name for p in (one / "run").iterdir())


def test_the_yaml_alone_launches_two_processes_that_match_one(tmp_path, tiny_model_dir, one_process):
    """distributed: {strategy: ddp, num_processes: 2} makes `trainer --config` re-launch itself (CPU: gloo)."""
    one, two, result = one_and_two_processes(one_process, tmp_path, tiny_model_dir, "ddp", max_steps=5, learning_rate=0.01, lora={"dropout": 0.0})
    assert result.stdout.count("Run directory:") == 1  # reported once, by the main process
    assert trajectory(two) == pytest.approx(trajectory(one), abs=rounding(one)[0])


def test_fsdp_shards_trains_like_one_process_and_saves_whole_weights(tmp_path, tiny_model_dir, one_process):
    """fsdp: each process holds half of every weight; the losses, checkpoints and saved adapter are the single process's."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    one, two, _ = one_and_two_processes(one_process, tmp_path, tiny_model_dir, "fsdp", max_steps=6, learning_rate=0.01, lora={"dropout": 0.0},
                                        **{"output.merge_adapter": True})
    assert trajectory(two) == pytest.approx(trajectory(one), abs=rounding(one)[0])
    assert eval_losses(two) == pytest.approx(eval_losses(one), abs=rounding(one)[0])  # 3 validation batches over 2 processes: all counted once
    # the checkpoint and the adapter hold whole weights, equal to one process's
    assert_same_weights(load_file(one / "model" / "adapter_model.safetensors"), load_file(two / "model" / "adapter_model.safetensors"), one)
    step = load_file(two / "checkpoints" / "step-6" / "trainable.safetensors")
    assert all(step[k].shape == v.shape for k, v in load_file(one / "checkpoints" / "step-6" / "trainable.safetensors").items())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert PeftModel.from_pretrained(base, two / "model") is not None
    assert AutoModelForCausalLM.from_pretrained(two / "merged") is not None


def test_fsdp_resume_continues_exactly(tmp_path, tiny_model_dir):
    """A sharded run that died after step 4 resumes from the gathered checkpoint and ends where an unbroken one ends."""
    assert_resumes_exactly(*cut_after_step_4(tmp_path, tiny_model_dir, strategy="fsdp"))


def test_fsdp_full_fine_tuning_saves_a_whole_model(tmp_path, tiny_model_dir, one_process):
    """method: full under fsdp: every weight is sharded and trained; the saved model is whole and loads."""
    from transformers import AutoModelForCausalLM

    one, two, _ = one_and_two_processes(one_process, tmp_path, tiny_model_dir, "fsdp", method="full", max_steps=3, learning_rate=0.001)
    assert trajectory(two) == pytest.approx(trajectory(one), abs=rounding(one)[0])
    assert_same_weights(AutoModelForCausalLM.from_pretrained(one / "model").state_dict(),
                        AutoModelForCausalLM.from_pretrained(two / "model").state_dict(), one)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_like_one_process_and_saves_whole_weights(tmp_path, tiny_model_dir, stage, one_process):
    """deepspeed: the engine shards the optimizer state (and at ZeRO-3 the weights); losses, the saved adapter and the
    merged model are the single process's, and each checkpoint holds DeepSpeed's shards beside the whole weights."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    one, two, result = one_and_two_processes(one_process, tmp_path, tiny_model_dir, "deepspeed", zero_stage=stage, max_steps=6,
                                             learning_rate=0.01, lora={"dropout": 0.0}, **{"output.merge_adapter": True})
    # ZeRO-3 builds the model partitioned (no process loads it whole); the counts are of whole weights all the same
    assert ("the weights were built partitioned" in result.stderr) == (stage == 3)
    assert "Method lora: 32,768 trainable of 120,640 parameters" in result.stderr
    assert trajectory(two) == pytest.approx(trajectory(one), abs=rounding(one)[0])
    assert eval_losses(two) == pytest.approx(eval_losses(one), abs=rounding(one)[0])
    assert_same_weights(load_file(one / "model" / "adapter_model.safetensors"), load_file(two / "model" / "adapter_model.safetensors"), one)
    checkpoint = two / "checkpoints" / "step-6"
    shards = sorted(p.name for p in (checkpoint / "zero" / "state").iterdir())
    prefix = "bf16_" if computed_in(two) == "bf16" else ""  # DeepSpeed's name for the shards of a bf16 run
    assert [n for n in shards if "optim_states" in n] == [f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
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
    """Early stopping reads the best checkpoint back through DeepSpeed's engine: the saved adapter is its weights.

    It stops by construction, whatever the losses do on this CPU: min_delta is larger than any possible gain, so the
    first evaluation stays the best and patience 1 ends the run at the second (step 2), whose weights are not kept."""
    from safetensors.torch import load_file

    config = tiny_config(tmp_path, tiny_model_dir, max_steps=40, batch_size=2, learning_rate=0.01, eval_every=1,
                         early_stopping={"patience": 1, "min_delta": 100.0}, lora={"dropout": 0.0})
    config = with_distributed(config, strategy="deepspeed", zero_stage=3, num_processes=2)
    result = run_trainer("--config", str(config), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("early stopping at step") == 1, result.stderr[-3000:]  # said by the main process
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and (summary["steps"], summary["best_step"]) == (2, 1)
    best = load_file(run / "checkpoints" / "best" / "trainable.safetensors")
    saved = load_file(run / "model" / "adapter_model.safetensors")
    assert len(saved) == len(best)
    for name, value in best.items():  # the checkpoint names the adapter ("default"), the saved file does not
        assert torch.equal(saved[name.replace(".default", "")], value), name


def test_deepspeed_full_fine_tuning_saves_a_whole_model(tmp_path, tiny_model_dir, one_process):
    """method: full under ZeRO-3: every weight is partitioned and trained; the saved model is whole and loads."""
    from transformers import AutoModelForCausalLM

    one, two, _ = one_and_two_processes(one_process, tmp_path, tiny_model_dir, "deepspeed", zero_stage=3, method="full", max_steps=3,
                                        learning_rate=0.001)
    assert trajectory(two) == pytest.approx(trajectory(one), abs=rounding(one)[0])
    assert_same_weights(AutoModelForCausalLM.from_pretrained(one / "model").state_dict(),
                        AutoModelForCausalLM.from_pretrained(two / "model").state_dict(), one)


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
    assert err.count("stopping after this") == 1 and err.count("Continue with the same command") == 1  # said once, by the main process
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


def test_a_stop_during_validation_cuts_it_in_every_process_at_the_same_batch(tmp_path, tiny_model_dir):
    """SIGTERM to `trainer` while two processes validate: the stop is summed over them at every batch, so both cut the
    pass at the same one (neither waits in a collective the other left), one checkpoint, exit 3, said once; --resume
    validates that step first and goes on."""
    import signal
    import time

    from conftest import TINY_DATA

    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps(TINY_DATA[i % len(TINY_DATA)]) + "\n" for i in range(400)))
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=2, batch_size=1, eval_every=1, **{"data.validation": str(validation)})
    config = with_distributed(config, strategy="ddp", num_processes=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each
    child = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO, env=env, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    seen = []
    assert child.stderr is not None
    for line in child.stderr:  # step 1's progress line comes just before its validation
        seen.append(line)
        if line.startswith("step 1/2"):
            break
    time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    err = "".join(seen) + child.communicate(timeout=120)[1]
    assert child.returncode == EXIT_STOPPED, err[-3000:]
    assert err.count("stopping: validation cut short at") == 1 and "Traceback" not in err, err[-3000:]
    run = tmp_path / "run"
    assert [c.name for c in complete_checkpoints(run)] == ["step-1"]
    assert json.loads((run / "checkpoints" / "step-1" / "trainer_state.json").read_text())["eval_pending"] is True
    resumed = run_trainer("--config", str(config), "--resume", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r] == [1, 2]
