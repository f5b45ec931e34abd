"""DPO and ORPO runs in trainer's loop: what a user gets (the run directory, the logged rewards, an exact resume),
the reference model (the model the run starts from), and a short real run on SmolLM2."""
import json
import math
import shutil

import pytest
from conftest import TINY_DATA, tiny_config

from trainer.checkpoint import complete_checkpoints
from trainer.cli import main
from trainer.objectives.preference import REFERENCE_FILE

WORDS = [r["messages"][1]["content"] for r in TINY_DATA]


def pairs_file(tmp_path):
    rows = [{"input": {"messages": [{"role": "user", "content": f"say {w}"}]}, "preferred_output": [{"role": "assistant", "content": w}],
             "non_preferred_output": [{"role": "assistant", "content": "I cannot say that."}]} for w in WORDS]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def preference_config(tmp_path, model_dir, objective="dpo", **training):
    config = tiny_config(tmp_path, model_dir, objective=objective, **training)
    pairs = pairs_file(tmp_path)
    text = config.read_text().replace(str(tmp_path / "data.jsonl"), str(pairs))
    config.write_text(text)
    return config


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_learns_to_prefer_the_chosen_answers(tmp_path, tiny_model_dir):
    config = preference_config(tmp_path, tiny_model_dir, max_steps=12, learning_rate=0.05, dpo={"beta": 1.0})
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    steps = [r for r in rows(run) if "loss" in r]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a new adapter starts as the reference model
    assert steps[-1]["loss"] < 0.5 * math.log(2)
    assert steps[-1]["reward_accuracy"] > steps[0]["reward_accuracy"] and steps[-1]["reward_margin"] > 0
    evals = [r for r in rows(run) if "eval_loss" in r]
    assert evals[-1]["eval_reward_accuracy"] >= 0.75 and "eval_perplexity" not in evals[-1]
    assert (run / REFERENCE_FILE).is_file() and (run / "model" / "adapter_config.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["final_eval_loss"] == pytest.approx(evals[-1]["eval_loss"], abs=1e-4)

    # the AutoTrain backend measures its DPO result the same way, computing the reference (adapter off) itself
    from trainer.backends.autotrain.results import validation_loss
    from trainer.config import load_config
    from trainer.data.pipeline import prepare_data
    from trainer.models import load_tokenizer

    (run / REFERENCE_FILE).unlink()
    loaded_config = load_config(str(run / "config.yaml"), check_files=False)
    data = prepare_data(loaded_config, load_tokenizer(str(tiny_model_dir)))
    loss, figures = validation_loss(loaded_config, run, data)
    assert loss == pytest.approx(evals[-1]["eval_loss"], abs=1e-5)
    assert figures["eval_reward_accuracy"] == evals[-1]["eval_reward_accuracy"] and (run / REFERENCE_FILE).is_file()


def test_orpo_runs_and_lowers_its_loss(tmp_path, tiny_model_dir):
    config = preference_config(tmp_path, tiny_model_dir, "orpo", max_steps=8)
    assert main(["--config", str(config)]) == 0
    steps = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"] and "reward_accuracy" in steps[-1]
    assert not (tmp_path / "run" / REFERENCE_FILE).exists()  # orpo has no reference model


def test_dpo_resume_continues_exactly_with_the_same_reference(tmp_path, tiny_model_dir):
    config = preference_config(tmp_path, tiny_model_dir, max_steps=8, save_every=2, keep_last=10)
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    uninterrupted = [r["loss"] for r in rows(run) if "loss" in r]
    for later in ("step-6", "step-8"):
        shutil.rmtree(run / "checkpoints" / later)
    shutil.rmtree(run / "model")
    (run / REFERENCE_FILE).unlink()  # even without it: a new adapter switched off is the reference again
    assert [c.name for c in complete_checkpoints(run)] == ["step-2", "step-4"]
    assert main(["--config", str(config), "--resume"]) == 0
    resumed = [r["loss"] for r in rows(run) if "loss" in r]
    assert resumed[4:] == pytest.approx(uninterrupted[4:], abs=1e-6)


def test_dpo_from_an_adapter_uses_that_model_as_the_reference(tmp_path, tiny_model_dir):
    """Preference tuning after SFT: the SFT adapter is trained further, and the reference is the SFT model itself
    (the base model with the adapter switched off would be the wrong one: the first loss would not be log 2)."""
    (tmp_path / "sft").mkdir()
    sft = tiny_config(tmp_path / "sft", tiny_model_dir, max_steps=6)
    assert main(["--config", str(sft)]) == 0
    dpo_dir = tmp_path / "dpo"
    dpo_dir.mkdir()
    config = preference_config(dpo_dir, tiny_model_dir, max_steps=3)
    config.write_text(config.read_text().replace("model:\n", f"model:\n  adapter: {tmp_path / 'sft' / 'run'}\n"))
    assert main(["--config", str(config)]) == 0
    first = next(r for r in rows(dpo_dir / "run") if "loss" in r)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["reward_margin"] == pytest.approx(0, abs=1e-6)


@pytest.mark.slow
def test_a_short_dpo_run_on_smollm2_and_its_evaluation(tmp_path):
    """The real demo model: pairs of a recipe's reference ingredients against a wrong list, a few steps, then
    `trainer eval` reports the reward accuracy of the tuned model beside the generation comparison."""
    from conftest import REPO

    from trainer.demo import demo_model_path

    recipes = [json.loads(line) for line in (REPO / "data" / "recipes" / "train.jsonl").read_text().splitlines()[:12]]
    pairs = [{"input": {"messages": r["messages"][:-1]}, "preferred_output": [r["messages"][-1]],
              "non_preferred_output": [{"role": "assistant", "content": '["salt", "water"]'}]} for r in recipes]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[:8]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[8:]))
    config = tmp_path / "c.yaml"
    config.write_text(f"""
model: {{name_or_path: {demo_model_path()}}}
data: {{train: {tmp_path / 'pairs.jsonl'}, validation: {tmp_path / 'val.jsonl'}, max_seq_length: 512}}
training: {{objective: dpo, max_steps: 3, batch_size: 4, learning_rate: 5.0e-4, warmup_ratio: 0.0}}
output: {{dir: {tmp_path / 'run'}}}
evaluation: {{after_training: true, systems: [base_zero_shot, tuned], metrics: [json_list_f1], max_examples: 2, max_new_tokens: 32}}
logging: {{log_every: 1}}
""")
    assert main(["--config", str(config)]) == 0
    found = json.loads((tmp_path / "run" / "eval.json").read_text())
    preference = found["summary"]["preference"]
    assert preference["pairs"] == 4 and 0 <= preference["reward_accuracy"] <= 1 and len(preference["reward_accuracy_ci95"]) == 2
    assert {"base_zero_shot", "tuned"} <= set(found) and "json_list_f1" in found["tuned"]
    steps = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"]
