"""The PEFT backend on a tiny model: what a user gets in the run directory, and that it can be trusted."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_trainer, stop_mid_run, tiny_config
from trainer.checkpoint import complete_checkpoints
from trainer.cli import main
from trainer.errors import EXIT_STOPPED


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_lora_run_leaves_a_usable_run_directory(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tiny_config(tmp_path, tiny_model_dir, max_steps=8, **{"logging.report_to": "tensorboard"})
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "README.md", "summary.json", "model/adapter_config.json",
                 "model/adapter_model.safetensors", "model/tokenizer.json"):
        assert (run / name).is_file(), name
    trajectory = [loss for _, loss in losses(run)]
    assert len(trajectory) == 8 and trajectory[-1] < trajectory[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, run / "model")
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    for name, value in model.get_base_model().state_dict().items():  # the base weights are untouched
        plain = name.replace(".base_layer", "")
        if "lora_" not in name and plain in original:
            assert torch.equal(value, original[plain]), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["final_eval_loss"] is not None
    from matplotlib.image import imread

    from trainer.config import load_config

    assert imread(run / "loss.png").shape[2] in (3, 4)
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    assert load_config(str(run / "config.yaml")).training.max_steps == 8
    assert "## Results" in (run / "README.md").read_text()
    assert "learning_rate: 0.01" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("method, checkpointing, precision", [("dora", False, "fp32"), ("full", False, "fp32"), ("lora", True, "fp32"),
                                                             ("lora", False, "bf16"), ("full", False, "bf16")])
def test_other_methods_train(tmp_path, tiny_model_dir, method, checkpointing, precision):
    from transformers import AutoModelForCausalLM

    config = tiny_config(tmp_path, tiny_model_dir, method=method, max_steps=6, learning_rate=0.003,
                         gradient_checkpointing=checkpointing, precision=precision)
    assert main(["--config", str(config)]) == 0
    trajectory = [loss for _, loss in losses(tmp_path / "run")]
    assert trajectory[-1] < trajectory[0]
    if method == "full":
        AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")


def test_full_fine_tuning_of_tied_embeddings_checkpoints_and_resumes_exactly(tmp_path, tiny_model_dir):
    """The head and the embeddings are one weight (SmolLM2): saved once, restored into both, resumed exactly."""
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import tiny_llama

    tied = tmp_path / "tied-model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = tiny_llama(vocab_size=len(tokenizer), tie=True)
    model.save_pretrained(tied)
    tokenizer.save_pretrained(tied)
    config = tiny_config(tmp_path, tied, method="full", max_steps=4, save_every=2, keep_last=10, learning_rate=0.003)
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    uninterrupted = losses(run)
    saved = load_file(run / "checkpoints" / "step-2" / "trainable.safetensors")
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" not in saved
    shutil.rmtree(run / "checkpoints" / "step-4")
    shutil.rmtree(run / "model")
    assert main(["--config", str(config), "--resume"]) == 0
    assert [loss for _, loss in losses(run)[2:]] == pytest.approx([loss for _, loss in uninterrupted[2:]], abs=1e-6)
    result = AutoModelForCausalLM.from_pretrained(run / "model")
    assert result.lm_head.weight.data_ptr() == result.model.embed_tokens.weight.data_ptr()


def test_merged_model_matches_the_adapter(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tiny_config(tmp_path, tiny_model_dir, **{"output.merge_adapter": True, "output.dir": str(tmp_path / "run")})
    assert main(["--config", str(config)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "run" / "model").eval()
    ids = torch.tensor([[2, 97, 95, 81, 94, 11, 84, 85, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)


def test_resume_continues_exactly(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=8, save_every=2, keep_last=10)
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    uninterrupted = losses(run)
    assert [c.name for c in complete_checkpoints(run)] == ["step-2", "step-4", "step-6", "step-8"]
    # Pretend the run died just after step 4: later checkpoints and outputs never existed.
    import shutil

    for later in ("step-6", "step-8"):
        shutil.rmtree(run / "checkpoints" / later)
    shutil.rmtree(run / "model")
    assert main(["--config", str(config), "--resume"]) == 0
    resumed = losses(run)
    assert [s for s, _ in resumed] == list(range(1, 9))
    assert [loss for _, loss in resumed[4:]] == pytest.approx([loss for _, loss in uninterrupted[4:]], abs=1e-6)


def test_a_run_records_what_the_plan_estimates_from(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """throughput.json (trainer.throughput): the run's trained tokens, loop seconds and steps, its time outside the
    loop and its evaluation's, each with the run's length; a resumed run's tokens and seconds from its start (its
    checkpoint kept them), and no time outside the loop, which it cannot tell from the loop's before the resume; a
    finished run resumed trains and records nothing."""
    import shutil

    from trainer.config import load_config
    from trainer.throughput import read_history, throughput_key

    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path / "cache"))
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=4, save_every=2, keep_last=10,
                         **{"evaluation.after_training": True, "evaluation.systems": ["tuned"], "evaluation.metrics": ["loss"],
                            "evaluation.max_examples": 2, "evaluation.max_new_tokens": 4})
    key = throughput_key(load_config(str(config)))
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    [first] = read_history().measurements[key]
    assert (first.steps, first.tokens, first.resumed_at_step, first.short) == (4, summary["trained_tokens"], None, True)
    assert first.seconds == pytest.approx(summary["train_seconds"], abs=0.05)
    for part in ("overhead", "evaluation"):
        [measured] = read_history().measurements[f"{key}|{part}_seconds"]
        assert measured.seconds > 0 and (measured.steps, measured.tokens) == (4, first.tokens)
    capsys.readouterr()
    assert main(["plan", "--config", str(config), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["time"]
    assert planned["measured_here_from"] == "the throughput earlier runs of this model, method, length and micro-batch measured here"
    assert planned["measured_here_seconds"] > 0 and planned["evaluation_here_seconds"] > 0
    shutil.rmtree(run / "checkpoints" / "step-4")
    shutil.rmtree(run / "model")
    assert main(["--config", str(config), "--resume"]) == 0
    second = read_history().measurements[key][1]
    assert (second.steps, second.tokens, second.resumed_at_step) == (4, first.tokens, 2)
    assert len(read_history().measurements[f"{key}|overhead_seconds"]) == 1
    assert main(["--config", str(config), "--resume"]) == 0
    assert len(read_history().measurements[key]) == 2


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, tiny_model_dir, capsys):
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=1)
    assert main(["--config", str(config)]) == 0
    assert main(["--config", str(config)]) == 2
    assert "already holds a run. Add --resume" in capsys.readouterr().err
    assert main(["--config", str(config), "--resume"]) == 0  # a finished run: nothing left to train


def test_early_stopping_keeps_the_best(tmp_path, tiny_model_dir):
    # min_delta is larger than any possible gain: the first evaluation is the best, then patience runs out
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=30, eval_every=1, early_stopping={"patience": 2, "min_delta": 100.0})
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] is True
    assert (summary["steps"], summary["best_step"]) == (3, 1)
    best = load_file(run / "checkpoints" / "best" / "trainable.safetensors")
    returned = load_file(run / "model" / "adapter_model.safetensors")
    assert sorted(k.replace(".default", "") for k in best) == sorted(returned)
    for name, value in best.items():
        assert torch.equal(value, returned[name.replace(".default", "")])


def test_a_run_records_the_system_prompt_every_training_conversation_shares(tmp_path, tiny_model_dir):
    """summary.json keeps it, for `trainer export --to ollama` to write as SYSTEM wherever the data is then."""
    from conftest import TINY_DATA
    from trainer.config import load_config
    from trainer.data.pipeline import load_examples
    from trainer.rundir import common_system_prompt

    config = tiny_config(tmp_path, tiny_model_dir, max_steps=1)
    rows = [{"messages": [{"role": "system", "content": "Answer in one word."}] + r["messages"]} for r in TINY_DATA]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["common_system_prompt"] == "Answer in one word."
    assert "Answer in one word" not in (run / "README.md").read_text()  # the card's results table is for results

    rows[3]["messages"][0]["content"] = "Answer in two words."
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert common_system_prompt(load_examples(str(tmp_path / "data.jsonl"), load_config(str(config)))[0]) is None
    assert common_system_prompt(load_examples(str(tmp_path / "data.jsonl"), load_config(str(config)))[0][:3]) == "Answer in one word."


@pytest.mark.integration
def test_a_run_without_deepspeed_neither_imports_it_nor_prints_its_warning(tmp_path, tiny_model_dir):
    """DeepSpeed is installed with the dev extra; a run that does not use it must not print its accelerator warning
    (transformers' save_pretrained asked accelerate, which imported deepspeed to look for its engine)."""
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=2, **{"output.merge_adapter": True})
    code = ("import runpy, sys; sys.argv = ['trainer', '--config', sys.argv[1]]\n"
            "try:\n    runpy.run_module('trainer', run_name='__main__')\n"
            "finally:\n    print('deepspeed imported:', 'deepspeed' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "merged").is_dir()
    assert "Setting accelerator to CPU" not in result.stderr and "real_accelerator" not in result.stderr, result.stderr
    assert "deepspeed imported: False" in result.stderr, result.stderr


@pytest.mark.integration
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=400, learning_rate=0.001)
    _, newest, step = stop_mid_run(config, rows=3)
    assert 3 <= step < 400
    result = run_trainer("--config", str(config), "--resume", "--set", "training.max_steps=" + str(step + 2))
    assert result.returncode == 0, result.stderr
    assert f"Resuming from {newest} (step {step}" in result.stderr


@pytest.mark.integration
def test_sigterm_during_validation_cuts_it_short_and_resume_validates_that_step(tmp_path, tiny_model_dir):
    """The UI's Stop during a long validation (issue 32): the pass ends at the next batch, counts for nothing (no
    eval row, no best checkpoint), the checkpoint is saved and the run exits 3; --resume validates that step first and
    ends where a run never stopped ends."""
    from conftest import TINY_DATA

    validation = tmp_path / "validation.jsonl"
    rows = 400  # batches of one: 3 s on two busy cores, well under a second on an idle machine
    validation.write_text("".join(json.dumps(TINY_DATA[i % len(TINY_DATA)]) + "\n" for i in range(rows)))
    settings = dict(max_steps=2, batch_size=1, eval_every=1, save_every=1, **{"data.validation": str(validation)})
    whole = tmp_path / "whole"
    whole.mkdir()
    assert main(["--config", str(tiny_config(whole, tiny_model_dir, **settings))]) == 0

    config = tiny_config(tmp_path, tiny_model_dir, **settings)
    # one thread, as the run above: two threads on two cores shared with other work made each batch 25 times slower
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:  # step 1's progress line comes just before its validation
        seen.append(line)
        if line.startswith("step 1/2"):
            break
    time.sleep(0.1)  # into the pass: a tenth of its 400 batches on an idle machine, fewer on a busy one
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    err = "".join(seen) + proc.communicate(timeout=120)[1]
    took = time.perf_counter() - sent
    assert proc.returncode == EXIT_STOPPED, err
    cut = re.search(r"stopping: validation cut short at (\d+) of (\d+) batches", err)
    assert cut and int(cut.group(2)) == rows and int(cut.group(1)) < rows // 2, err
    assert "validation loss" not in err and "Traceback" not in err, err
    run = tmp_path / "run"
    assert [c.name for c in complete_checkpoints(run)] == ["step-1"]
    assert json.loads((run / "checkpoints" / "step-1" / "trainer_state.json").read_text())["eval_pending"] is True
    assert not (run / "checkpoints" / "best").exists()
    assert not [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    print(f"\nStop during validation: exit {took:.1f} s after SIGTERM, cut at batch {cut.group(1)} of {rows}")

    resumed = run_trainer("--config", str(config), "--resume", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stderr and "step 1: validation loss" in resumed.stderr

    def rows(folder):
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    got, expected = rows(run), rows(whole / "run")
    assert [(r["step"], "eval_loss" in r) for r in got] == [(1, False), (1, True), (2, False), (2, True)]
    assert [r.get("eval_loss", r.get("loss")) for r in got] == pytest.approx([r.get("eval_loss", r.get("loss")) for r in expected], abs=1e-6)


@pytest.mark.integration
def test_kill_during_checkpoint_save_never_leaves_a_broken_checkpoint(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=400, save_every=1, keep_last=3, learning_rate=0.001)
    checkpoints = tmp_path / "run" / "checkpoints"
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--resume"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:  # kill at the moment a save is in progress
            if checkpoints.is_dir() and any(p.name.startswith(".tmp-step") for p in checkpoints.iterdir()):
                break
            time.sleep(0.001)
        proc.kill()
        proc.wait()
        kills += 1
        for folder in complete_checkpoints(tmp_path / "run"):
            assert (folder / "trainable.safetensors").is_file() and (folder / "optimizer.pt").is_file()
            load_file(folder / "trainable.safetensors")
            torch.load(folder / "optimizer.pt", weights_only=False)
    assert kills == 3
    done = run_trainer("--config", str(config), "--resume", "--set", "training.max_steps=20")
    assert done.returncode == 0, done.stderr
    assert not any(p.name.startswith(".tmp") for p in checkpoints.iterdir())


@pytest.mark.integration
def test_missing_model_is_named_and_offline_is_explained(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir)
    text = config.read_text().replace(str(tiny_model_dir), "someone/no-such-model")
    config.write_text(text)
    result = run_trainer("--config", str(config), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "could not load the tokenizer of 'someone/no-such-model'" in result.stderr
    assert "the Hugging Face Hub may be unreachable" in result.stderr and "Traceback" not in result.stderr
