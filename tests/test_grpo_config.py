"""training.grpo.graders from the user's side: grader objects and grader files in the YAML, each problem at its line,
the reward's weights, and the form's YAML box for the list."""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import MINIMAL

from trainer.config import parse_config
from trainer.errors import UserError
from trainer.reinforcement.rewards import load_rewards

EXACT = "{type: string_check, name: exact, operation: eq, input: '{{ sample.output_text }}', reference: '{{ item.answer }}'}"


def grpo_yaml(graders: str) -> str:
    return MINIMAL + f"  objective: grpo\n  grpo:\n    num_generations: 4\n    graders:\n{graders}"


def problems(text: str) -> list[str]:
    with pytest.raises(UserError) as info:
        parse_config(text, "x.yaml")
    return [str(p) for p in info.value.problems]


def test_graders_are_read_with_their_weights(in_repo, tmp_path):
    grader_file = tmp_path / "fmt.json"
    grader_file.write_text(json.dumps({"type": "builtin", "metric": "json_list_f1", "reference": "{{ item.answer }}"}))
    found = problems(grpo_yaml(f"      - {EXACT}\n      - {{file: {grader_file}, weight: 0.5}}\n      - {grader_file}\n"))
    assert found == ["x.yaml:13:9: training.grpo.graders[2]: two graders are named 'fmt'; give each its own `name` (each is logged by its name)."]
    text = grpo_yaml(f"      - {EXACT[:-1]}, weight: 2}}\n      - {{file: {grader_file}, weight: -0.5}}\n")
    cfg = parse_config(text, "x.yaml")
    assert parse_config(cfg.to_yaml()) == cfg  # written back as it was read
    rewards = load_rewards(yaml.safe_load(text)["training"]["grpo"]["graders"])
    assert [(r.name, r.weight, type(r.grader).__name__) for r in rewards] == [("exact", 2.0, "StringCheck"), ("fmt", -0.5, "Builtin")]


def test_no_graders_is_an_error(in_repo):
    found = problems(MINIMAL + "  objective: grpo\n")
    assert found == ["x.yaml:6:3: training.grpo.graders: grpo learns from the scores graders give its answers, and none is set; "
                     "add one, e.g. - {type: string_check, name: correct, operation: eq, input: '{{ sample.output_text }}', "
                     "reference: '{{ item.answer }}'} (docs/graders.md), or set training.objective: sft."]


def test_each_grader_problem_is_at_its_line(in_repo, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("type: string_check\nname: b\noperation: eq\ninput: '{{ sample.output_text }'\nreference: x\n")
    found = problems(grpo_yaml(
        "      - {type: string_check, name: a, operation: eqq, input: '{{ sample.output_text }}', reference: x}\n"
        "      - type: builtin\n"
        "        name: f1\n"
        "        metric: json_list_f2\n"
        "        weight: 0\n"
        f"      - {broken}\n"
        "      - nothere.yaml\n"))
    assert found[0] == "x.yaml:11:50: training.grpo.graders[0].operation: 'eqq' is not one of eq, ne, like, ilike. Did you mean `eq`?"
    assert found[1].startswith("x.yaml:14:17: training.grpo.graders[1].metric: 'json_list_f2' is not one of")
    assert found[2].startswith(f"x.yaml:16:9: training.grpo.graders[2]: {broken}: the grader file has problems: {broken}:4:")
    assert found[3].startswith("x.yaml:17:9: training.grpo.graders[3]: no grader file 'nothere.yaml'")
    assert len(found) == 4
    assert problems(grpo_yaml("      - 3\n")) == ["x.yaml:11:9: training.grpo.graders[0]: 3 is not allowed here."]  # the schema's


def test_a_zero_weight_is_refused(in_repo):
    found = problems(grpo_yaml(f"      - {EXACT[:-1]}, weight: 0}}\n"))
    assert found == ["x.yaml:11:133: training.grpo.graders[0].weight: `weight` must be a number other than 0 (negative for a penalty), not 0."]


def test_a_score_model_grader_needs_an_endpoint(in_repo, monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "JUDGE_KEY"):
        monkeypatch.delenv(name, raising=False)
    judge = "{type: score_model, name: judge, model: m, input: [{role: user, content: '{{ sample.output_text }}'}], api_key_env: JUDGE_KEY}"
    found = problems(grpo_yaml(f"      - {judge}\n"))
    assert found == ["x.yaml:11:9: training.grpo.graders[0]: the grader 'judge': score_model calls OpenAI's endpoint, which needs a key: "
                     "set JUDGE_KEY, or give `base_url` (e.g. http://127.0.0.1:8000/v1 for `trainer serve`)."]
    nested = f"{{type: multi, name: both, calculate_output: judge, graders: {{judge: {judge}}}}}"
    assert len(problems(grpo_yaml(f"      - {nested}\n"))) == 1
    monkeypatch.setenv("JUDGE_KEY", "k")
    parse_config(grpo_yaml(f"      - {judge}\n"))


def test_graders_under_another_objective_are_refused(in_repo):
    found = problems(MINIMAL + f"  grpo:\n    graders:\n      - {EXACT}\n")
    assert found == ["x.yaml:9:7: training.grpo.graders: only the grpo objective reads this, and training.objective is sft; "
                     "set training.objective: grpo, or remove it."]


def test_the_form_shows_the_graders_as_yaml_and_reads_them_back(in_repo):
    from trainer.config.schema import load_schema
    from ui.form import fields, from_config, to_document

    specs = fields(load_schema())
    spec = next(s for s in specs if s.key == "training.grpo.graders")
    assert spec.kind == "yaml" and spec.advanced
    graders = [yaml.safe_load(EXACT), {"file": "g.yaml", "weight": 2}]
    data = yaml.safe_load(MINIMAL) | {"training": {"epochs": 1, "objective": "grpo", "grpo": {"graders": graders}}}
    values = from_config(specs, data)
    box = values[specs.index(spec)]
    assert yaml.safe_load(box) == graders and "- type: string_check" in box
    assert to_document(specs, values)["training"]["grpo"]["graders"] == graders
    assert "graders" not in to_document(specs, from_config(specs, yaml.safe_load(MINIMAL)))["training"].get("grpo", {})


def test_what_grpo_cannot_run_yet_is_refused(in_repo):
    found = problems(grpo_yaml(f"      - {EXACT}\n    beta: 0.04\n  method: full\ndistributed: {{strategy: ddp}}\n"))
    assert [p.split(": ", 2)[1] for p in found] == ["training.grpo.beta", "distributed.strategy"]
    assert "compares with the model with its adapter switched off" in found[0] and "set training.grpo.beta: 0" in found[0]
    assert "set distributed.strategy: none" in found[1]
    assert "set data.format: auto" in problems(grpo_yaml(f"      - {EXACT}\n").replace("  train: data/recipes/train.jsonl\n",
                                                                                          "  train: data/recipes/train.jsonl\n  format: alpaca\n"))[0]


def test_the_guides_smallest_run_is_a_valid_config():
    from conftest import REPO

    text = (REPO / "docs" / "reinforcement-fine-tuning.md").read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(text, "guide.yaml", check_files=False)
    assert cfg.training.objective == "grpo" and cfg.training.grpo.graders[0]["name"] == "correct"


def test_evaluation_graders_are_checked_like_grpo_graders(in_repo):
    """evaluation.graders, for any objective: each problem at its line, a missing file, and a name that is one of
    trainer eval's own numbers (the grader would overwrite it in eval.json)."""
    found = problems(MINIMAL + "evaluation:\n  graders:\n"
                     "    - {type: string_check, name: loss, operation: eq, input: '{{ sample.output_text }}', reference: '{{ item.reference }}'}\n"
                     "    - {type: builtin, name: f1, metric: json_list_f2, reference: '{{ item.reference }}'}\n"
                     "    - nothere.yaml\n")
    assert found[0].startswith("x.yaml:9:7: evaluation.graders[0]: the grader 'loss' is named like one of trainer eval's own numbers")
    assert found[1].startswith("x.yaml:10:41: evaluation.graders[1].metric: 'json_list_f2' is not one of")
    assert found[2] == f"x.yaml:11:7: evaluation.graders[2]: no grader file 'nothere.yaml' (relative paths start from {in_repo})."
    assert len(found) == 3
    cfg = parse_config(MINIMAL + f"evaluation:\n  graders:\n    - {EXACT}\n", "x.yaml")
    assert cfg.evaluation.graders[0]["name"] == "exact" and parse_config(cfg.to_yaml()) == cfg


def test_vllm_generation_is_refused_where_vllm_cannot_sample(in_repo):
    """generation: vllm hands vLLM the policy as a LoRA adapter file: not for full or DoRA runs, not on a GGUF base."""
    for extra, why in [("  method: full\n", "it trains every weight"), ("  method: dora\n", "does not apply DoRA adapters")]:
        found = problems(grpo_yaml(f"      - {EXACT}\n    generation: vllm\n{extra}"))
        assert len(found) == 1 and "training.grpo.generation: vLLM samples grpo's answers for lora and qlora runs" in found[0], found
        assert why in found[0] and "set training.grpo.generation: transformers" in found[0]
    gguf = grpo_yaml(f"      - {EXACT}\n    generation: vllm\n").replace("name_or_path: gpt2", "name_or_path: smol.Q4_1.gguf")
    with pytest.raises(UserError) as info:
        parse_config(gguf, "x.yaml", check_files=False)
    assert "no LoRA adapter on a model read from a GGUF file" in str(info.value.problems[0])
    assert "vLLM samples at temperatures from 0.01 to 2" in problems(grpo_yaml(f"      - {EXACT}\n    generation: vllm\n    temperature: 3\n"))[0]
    for generation in ("vllm", "auto", "transformers"):
        assert parse_config(grpo_yaml(f"      - {EXACT}\n    generation: {generation}\n  method: qlora\n")).training.grpo.generation == generation
    # auto never asks for what cannot be: a full run with vLLM installed and a GPU would still sample with transformers
    from trainer.reinforcement.vllm_sampling import choose_generation

    full = parse_config(grpo_yaml(f"      - {EXACT}\n  method: full\n"))
    assert choose_generation(full, "cpu") == "transformers" and choose_generation(full, "cuda") == "transformers"


def test_answer_ids_end_with_the_token_that_ended_them():
    """vLLM's CompletionOutput (its fields token_ids, finish_reason, stop_reason): an end-of-sequence token is in
    token_ids, a stop id only in stop_reason in some versions; a cut answer has neither."""
    from types import SimpleNamespace as Completion

    from trainer.reinforcement.vllm_sampling import answer_ids

    stops = [2, 7]
    assert answer_ids(Completion(token_ids=(5, 6, 2), finish_reason="stop", stop_reason=None), stops, 2) == [5, 6, 2]
    assert answer_ids(Completion(token_ids=(5, 6), finish_reason="stop", stop_reason=7), stops, 2) == [5, 6, 7]
    assert answer_ids(Completion(token_ids=(5, 6, 7), finish_reason="stop", stop_reason=7), stops, 2) == [5, 6, 7]
    assert answer_ids(Completion(token_ids=(5, 6, 9), finish_reason="length", stop_reason=None), stops, 2) == [5, 6, 9]
