"""The quickstart on the real SmolLM2-135M-Instruct, shortened: train, generate, evaluate."""
import json

import pytest

from conftest import run_trainer

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_quickstart_shortened(tmp_path):
    run = tmp_path / "quickstart"
    # no separate validation-loss pass over the 100 validation recipes: the evaluation scores the loss of its 6
    overrides = ["--set", "training.epochs=null", "--set", "training.max_steps=4", "--set", f"output.dir={run}",
                 "--set", "data.validation=null", "--set", "data.validation_split=0", "--set", "training.eval_every=null",
                 "--set", "evaluation.test=data/recipes/validation.jsonl",
                 "--set", "evaluation.max_examples=6", "--set", "evaluation.max_new_tokens=48", "--set", "evaluation.after_training=true"]
    result = run_trainer("--config", "configs/quickstart.yaml", *overrides, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "eval.json").read_text())
    assert summary["steps"] == 4 and report["tuned"]["loss"] < min(2.0, report["base_zero_shot"]["loss"])  # measured 0.83 and 1.55
    assert set(report) >= {"base_zero_shot", "base_few_shot", "base_retrieval", "tuned", "summary"}
    for system in ("base_zero_shot", "base_few_shot", "base_retrieval", "tuned"):
        assert {"json_list_f1", "loss", "prompt_tokens_mean", "generated_tokens_mean", "seconds_per_example", "ci95"} <= set(report[system])
    assert set(report["summary"]["comparisons"]) == {"tuned vs base_zero_shot", "tuned vs base_few_shot", "tuned vs base_retrieval"}
    assert report["base_few_shot"]["prompt_tokens_mean"] > 2.5 * report["base_zero_shot"]["prompt_tokens_mean"]
    assert (run / "eval.md").read_text().count("**Reference:**\n\n```text\n") == 5 and (run / "eval.png").is_file()
    assert "the fine-tuned model" in result.stdout.lower()  # the verdict, whichever way it went

    answer = run_trainer("generate", "--run", str(run), "--max-new-tokens", "40", "--prompt",
                         "Title: Toast\n\nIngredients: [\"2 slices bread\", \"1 Tbsp. butter\"]\n\nGeneric ingredients: ",
                         "--system", "You are a helpful recipe assistant. You are to extract the generic ingredients from each of the recipes provided.")
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert answer.stdout.strip()


def test_tools_quickstart_shortened(tmp_path):
    """The tool-calling quickstart: trains on tools data with the hermes template, evaluates tool_call_match for the
    three systems, and `generate --tools` returns the parsed calls."""
    run = tmp_path / "tools"
    # 3 steps of 4 (not 8), and no validation-loss pass (the evaluation scores the validation file itself): 70 s less
    overrides = ["--set", "training.epochs=null", "--set", "training.max_steps=3", "--set", "training.batch_size=4",
                 "--set", f"output.dir={run}", "--set", "data.validation=null", "--set", "data.validation_split=0",
                 "--set", "evaluation.test=data/tools/validation.jsonl",
                 "--set", "evaluation.max_examples=4", "--set", "evaluation.few_shot=1", "--set", "evaluation.max_new_tokens=40"]
    result = run_trainer("--config", "configs/tools-quickstart.yaml", *overrides, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "eval.json").read_text())
    for system in ("base_zero_shot", "base_few_shot", "tuned"):
        assert 0.0 <= report[system]["tool_call_match"] <= 1.0 and "tool_call_wellformed" in report[system]
    assert report["summary"]["main_metric"] == "tool_call_match"

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "What's the weather in Oslo?"}]}) + "\n")
    answer = run_trainer("generate", "--run", str(run), "--max-new-tokens", "40", "--input", str(prompts), "--tools", "data/tools/tools.json")
    assert answer.returncode == 0, answer.stderr[-2000:]
    line = json.loads(answer.stdout.strip().splitlines()[-1])
    assert "tool_calls" in line  # a list of parsed calls, [] for a text answer, or null for a malformed call
