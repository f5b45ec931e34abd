"""grpo runs for real on the tiny model: the answers sampled, graded and learnt from, what the run directory holds
afterwards, a stop and a resume, and the dry run that refuses a reward that cannot teach anything."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import run_trainer, stop_mid_run

from trainer.checkpoint import complete_checkpoints
from trainer.reinforcement.sampling import position_ids

WORDS = ("red", "blue", "green", "pink", "gold", "grey", "teal", "navy")


def grpo_config(tmp_path, model_dir, grader: dict | None = None, **training: object):
    """Prompts 'say <word>'; the reward: how close the answer is to the word (rapidfuzz's ratio: partial credit, so the
    random model's answers to one prompt score differently)."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {w}", "word": w}) + "\n" for w in WORDS))
    grader = grader or {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match", "input": "{{ sample.output_text }}",
                        "reference": "{{ item.word }}"}
    config = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "validation_split": 0, "max_seq_length": 64},
        "training": {"objective": "grpo", "max_steps": 4, "batch_size": 2, "learning_rate": 0.01, "warmup_ratio": 0.0, "seed": 1,
                     "precision": "fp32", "grpo": {"num_generations": 4, "max_completion_length": 12, "graders": [grader]}, **training},
        "output": {"dir": str(tmp_path / "run")},
        "logging": {"log_every": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_position_ids_count_from_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[1, 1, 0, 1, 2, 1], [0, 1, 2, 3, 4, 5]]


@pytest.mark.integration
def test_a_grpo_run_samples_grades_learns_and_leaves_a_run_directory(tmp_path, tiny_model_dir, cli):
    config = grpo_config(tmp_path, tiny_model_dir)
    raw = yaml.safe_load(config.read_text())
    raw["training"]["grpo"] |= {"beta": 0.04, "num_iterations": 2}
    config.write_text(yaml.safe_dump(raw))
    result = cli("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "Dry run: 4 prompts x 4 answers of the starting model" in result.stderr and "so the reward can teach" in result.stderr
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # a round is sampled and graded once, then trained on num_iterations times: its rewards are logged with its first step
    for row in rows[::2]:
        assert {"reward", "reward_std", "zero_spread_groups", "reward_close", "reward_close_std", "grader_errors"} <= row.keys()
        assert 0 <= row["reward_close"] <= 1 and row["grader_errors"] == 0
    assert rows[0]["reward_close_std"] > 0 and rows[0]["zero_spread_groups"] < 1
    for row in rows:
        assert {"loss", "completion_length", "kl", "clip_region", "entropy"} <= row.keys() and 0 < row["completion_length"] <= 12
    assert rows[0]["kl"] == 0 and rows[1]["kl"] > 0  # the second pass: the adapter has moved from the reference
    assert rows[1]["clip_region"] > 0 or rows[3]["clip_region"] > 0  # the old log-probs are the sampler's, so clipping can act
    completions = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert {c["step"] for c in completions} == {1, 3} and len(completions) == 8
    assert all(c["prompt"].startswith("say ") and 0 <= c["scores"]["close"] <= 1 and c["reward"] == c["scores"]["close"] for c in completions)
    assert [p.name for p in complete_checkpoints(run)] == ["step-4"]
    assert (run / "model" / "adapter_config.json").is_file() and json.loads((run / "summary.json").read_text())["steps"] == 4


@pytest.mark.integration
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path, tiny_model_dir):
    config = grpo_config(tmp_path, tiny_model_dir, max_steps=400, learning_rate=0.001)
    _, newest, step = stop_mid_run(config, rows=2)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert 2 <= step < 400
    result = run_trainer("--config", str(config), "--resume", "--set", f"training.max_steps={step + 2}")
    assert result.returncode == 0, result.stderr
    assert f"Resuming from {newest} (step {step}" in result.stderr and "Dry run" not in result.stderr
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, step + 3))
    completions = [json.loads(line)["step"] for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert completions == sorted(completions) and completions[-1] == step + 2


def test_a_reward_that_cannot_teach_is_refused_before_training(tmp_path, tiny_model_dir, cli):
    never = {"type": "string_check", "name": "exact", "operation": "eq", "input": "{{ sample.output_text }}", "reference": "never said by a random model"}
    config = grpo_config(tmp_path, tiny_model_dir, grader=never)
    result = cli("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert ("the reward cannot teach anything: the starting model answered 4 training prompts 4 times each, and every answer to the "
            "same prompt got the same reward (the rewards seen: 0)") in result.stderr
    assert not complete_checkpoints(tmp_path / "run")


@pytest.mark.integration
def test_trainer_eval_on_a_grpo_run_measures_its_reward_on_held_out_prompts(tmp_path, tiny_model_dir, cli):
    """`trainer eval` on a grpo config: the held-out prompts, the training grader as the metric with its interval and the
    tuned-vs-untuned difference; few-shot and retrieval left out (no answers to show); a chats test file's items are the
    record plus `reference`, so a grader reading item.word is refused before any answer is generated."""
    config = grpo_config(tmp_path, tiny_model_dir, max_steps=1, **{})
    raw = yaml.safe_load(config.read_text())
    raw["data"]["validation_split"] = 0.25  # 2 of the 8 prompts held out
    raw["evaluation"] = {"max_new_tokens": 4, "metrics": ["exact_match"]}
    config.write_text(yaml.safe_dump(raw))
    assert cli("--config", str(config)).returncode == 0
    result = cli("eval", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "base_few_shot and base_retrieval left out" in result.stderr and "evaluation.metrics are left out, the graders measure (close)" in result.stderr
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["summary"]["systems"] == ["base_zero_shot", "tuned"] and report["summary"]["examples"] == 2
    assert report["summary"]["main_metric"] == "close" and "exact_match" not in report["tuned"]
    for system in ("base_zero_shot", "tuned"):
        low, high = report[system]["ci95"]["close"]
        assert 0 <= low <= report[system]["close"] <= high <= 1 and report[system]["grader_errors"] == {"close": 0}
    assert set(report["summary"]["comparisons"]["tuned vs base_zero_shot"]) == {"close"}

    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "say red"}, {"role": "assistant", "content": "red"}]}) + "\n")
    raw["evaluation"]["test"] = str(chats)
    config.write_text(yaml.safe_dump(raw))
    result = cli("eval", "--config", str(config))
    assert result.returncode == 2 and "the grader 'close' reads item.word, and this record has no field 'word'" in result.stderr
    assert "a chat case's item is its record plus `reference`" in result.stderr


SLOW_OUT_OF_ORDER = '''
import time

def grade(sample, item):
    text = sample["output_text"]
    time.sleep(0.3 if len(text) % 2 else 0.0)  # the graders finish in another order than they started
    return len(text) / 100 + (1.0 if item["word"] in text else 0.0)
'''


def test_answers_are_graded_as_they_end_and_the_grades_equal_grading_after_the_round(tmp_path, tiny_model_dir, monkeypatch):
    """The overlapped round (each answer graded as generate ends it, the next micro-batch sampled meanwhile) gives the
    answers, grades and advantages of sampling the whole round first and then grading one answer after the other;
    answers are sent to the graders in the order they end (shortest first), not at the end of generate."""
    from concurrent.futures import ThreadPoolExecutor

    from trainer.config import load_config
    from trainer.reinforcement import loop, sampling
    from trainer.reinforcement.loop import grade_round, round_prompts, sample_round
    from trainer.reinforcement.recipe import setup
    from trainer.reinforcement.rewards import score_answers

    grader = {"type": "python", "name": "slow", "source": SLOW_OUT_OF_ORDER}
    path = grpo_config(tmp_path, tiny_model_dir, grader=grader, gradient_accumulation=2)
    raw = yaml.safe_load(path.read_text())
    raw["training"]["grpo"]["max_completion_length"] = 40
    raw["data"]["max_seq_length"] = 80
    path.write_text(yaml.safe_dump(raw))
    run = setup(load_config(path), tmp_path / "run", resume=False)
    prompts = round_prompts(run.prompts, 4, 0, 0, seed=1)  # 2 micro-batches of 2 prompts x 4 answers

    told: list[tuple[int, int, str]] = []  # (micro-batch, index, text) in the order the graders heard of them
    original = sampling.sample_answers

    def recording(*args, on_answer, **kwargs):
        batch = len({b for b, _, _ in told}) if told else 0
        def note(index, text):
            told.append((batch, index, text))
            on_answer(index, text)
        return original(*args, on_answer=note, **kwargs)

    monkeypatch.setattr(loop, "sample_answers", recording)
    torch.manual_seed(5)
    with ThreadPoolExecutor(8) as pool:
        overlapped = sample_round(run, prompts, pool)
        scored, advantages = grade_round(run, overlapped)

        torch.manual_seed(5)
        batches = [original(run.model, run.tokenizer, prompts[i : i + 2], run.config.training.grpo, "cpu") for i in (0, 2)]
        texts = [text for b in batches for text in b.texts]
        items = [p.item for p in prompts for _ in range(4)]
        sequential = score_answers(run.rewards, texts, items, pool)

    assert [text for b in overlapped.batches for text in b.texts] == texts
    for mine, theirs in zip(overlapped.batches, batches):
        assert torch.equal(mine.input_ids, theirs.input_ids) and torch.equal(mine.completion_mask, theirs.completion_mask)
    assert scored.rewards == sequential.rewards and [[g.score for g in row] for row in scored.grades] == [[g.score for g in row] for row in sequential.grades]
    assert all(g.error is None for row in scored.grades for g in row)
    assert torch.equal(advantages, run.objective.advantages(torch.tensor(sequential.rewards, dtype=torch.float32)))
    # each micro-batch's answers reached the graders shortest first, each once, with the text the loss trains on
    for b, samples in enumerate(batches):
        order = [(index, text) for batch, index, text in told if batch == b]
        lengths = samples.completion_mask.sum(1).tolist()
        assert sorted(i for i, _ in order) == list(range(samples.answers)) and all(text == samples.texts[i] for i, text in order)
        assert [i for i, _ in order] == sorted(range(samples.answers), key=lambda i: (lengths[i], i))
        assert min(lengths) < max(lengths)  # some answers ended before the longest: they were graded during generation


def test_generation_vllm_on_a_cpu_is_a_message_before_the_model_loads(tmp_path, tiny_model_dir, cli):
    import importlib.util

    config = grpo_config(tmp_path, tiny_model_dir)
    result = cli("--config", str(config), "--set", "training.grpo.generation=vllm", "--set", "backend.peft.device=cpu")
    assert result.returncode == 2, result.stderr
    assert "training.grpo.generation is vllm, which samples on NVIDIA GPUs, and this run is on the cpu" in result.stderr
    assert "Loading" not in result.stderr and not (tmp_path / "run" / "model").exists()
    if importlib.util.find_spec("vllm") is None:  # auto on this machine: transformers, said in no words
        assert cli("--config", str(config), "--set", "training.max_steps=1").returncode == 0


def _stand_in_vllm(folder, fails_in: str):
    """A package named vllm with the names trainer imports from it, failing where another vLLM release (or a GPU short
    of memory) would: in LLM() or in its generate. vLLM itself runs only on NVIDIA GPUs (tests/test_grpo_vllm.py); this
    stands in for it to test what trainer does when it fails, not what it samples."""
    package = folder / "vllm"
    (package / "lora").mkdir(parents=True)
    (package / "__init__.py").write_text(f"""
class LLM:
    def __init__(self, **kwargs):
        if {fails_in == "start"!r}:
            raise TypeError("EngineArgs.__init__() got an unexpected keyword argument 'generation_config'")

    def generate(self, *args, **kwargs):
        raise ValueError("No available memory for the cache blocks")


class SamplingParams:
    def __init__(self, **kwargs):
        pass
""")
    (package / "inputs.py").write_text("def TokensPrompt(**kwargs):\n    return kwargs\n")
    (package / "lora" / "__init__.py").write_text("")
    (package / "lora" / "request.py").write_text("class LoRARequest:\n    def __init__(self, *args):\n        pass\n")


def _forget_vllm() -> None:
    import sys

    for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
        del sys.modules[name]


@pytest.mark.parametrize("fails_in", ["start", "first batch"])
def test_auto_leaves_a_failing_vllm_for_generate_and_vllm_refuses_with_the_reason(tmp_path, tiny_model_dir, monkeypatch, capsys, request,
                                                                                  fails_in):
    from concurrent.futures import ThreadPoolExecutor

    from trainer.config import load_config
    from trainer.errors import UserError
    from trainer.reinforcement.loop import sample_round
    from trainer.reinforcement.recipe import round_prompts, setup
    from trainer.reinforcement.vllm_sampling import ADAPTERS_DIR, start_sampler

    _stand_in_vllm(tmp_path / "packages", fails_in)
    _forget_vllm()
    request.addfinalizer(_forget_vllm)  # later tests must not find the stand-in (vllm_installed)
    monkeypatch.syspath_prepend(str(tmp_path / "packages"))
    path = grpo_config(tmp_path, tiny_model_dir)
    run = setup(load_config(path), tmp_path / "run", resume=False)  # on this CPU: transformers samples
    prompts = round_prompts(run.prompts, 2, 0, 0, seed=1)
    assert run.sampler is None

    run.sampler = start_sampler(run.config, run.model, run.run_dir)
    if fails_in == "start":
        assert run.sampler is None
        assert "vLLM could not start (TypeError: EngineArgs.__init__() got an unexpected keyword argument 'generation_config'); " \
               "sampling with transformers' generate instead" in capsys.readouterr().err
    else:
        assert run.sampler is not None
        with ThreadPoolExecutor(2) as pool:
            answers = sample_round(run, prompts, pool)
            scored = answers.grading.scored(answers.answers)
        assert run.sampler is None and not (run.run_dir / ADAPTERS_DIR).exists()
        assert "vLLM failed on its first batch (ValueError: No available memory for the cache blocks); sampling with " \
               "transformers' generate instead" in capsys.readouterr().err
        assert answers.answers == 2 * 4 and len(scored.rewards) == 8 and all(0 <= r <= 1 for r in scored.rewards)

    raw = yaml.safe_load(path.read_text())
    raw["training"]["grpo"]["generation"] = "vllm"
    path.write_text(yaml.safe_dump(raw))
    insisting = run.config = load_config(path)
    if fails_in == "start":
        with pytest.raises(UserError, match="vLLM could not start: TypeError: .*Set training.grpo.generation: transformers"):
            start_sampler(insisting, run.model, run.run_dir)
    else:
        run.sampler = start_sampler(insisting, run.model, run.run_dir)
        with pytest.raises(UserError, match="vLLM failed on its first batch: ValueError: No available memory"), ThreadPoolExecutor(2) as pool:
            sample_round(run, prompts, pool)
