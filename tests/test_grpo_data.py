"""grpo's prompts: OpenAI's reinforcement format and TRL's prompt-only format detected, each record's fields kept for the
graders, and the problems (an answer already there, a field a grader reads missing) at file:line."""
from __future__ import annotations

import json

import yaml

from trainer.config import parse_config
from trainer.data.prompts import encode_prompts, read_prompts
from trainer.reinforcement.rewards import load_rewards

CONTAINS = {"type": "string_check", "name": "has_answer", "operation": "like", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}


def _config(tmp_path, rows: list, model: str = "m", **data: object):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = yaml.safe_dump({"model": {"name_or_path": model}, "data": {"train": str(path), "validation_split": 0, **data},
                           "training": {"objective": "grpo", "max_steps": 1, "grpo": {"graders": [CONTAINS]}}})
    config = parse_config(text, check_files=False)
    return config, load_rewards(config.training.grpo.graders), str(path)


def test_openai_reinforcement_records_are_prompts_with_their_fields(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "be short"}, {"role": "user", "content": f"say {w}"}], "answer": w, "meta": {"n": i}}
            for i, w in enumerate(("red", "blue"))]
    config, rewards, _ = _config(tmp_path, rows)
    prompts = read_prompts(config, rewards)
    assert prompts.splits[0].detection == "detected grpo prompts (openai layout): messages ending with a user turn in 2 of 2 rows"
    assert [(p.messages[-1].content, p.item["answer"], p.line) for p in prompts.train] == [("say red", "red", 1), ("say blue", "blue", 2)]
    assert prompts.train[0].messages[0].role == "system" and prompts.validation == []


def test_trl_prompt_only_records_as_text_or_messages(tmp_path):
    rows = [{"prompt": "say red", "answer": "red"}, {"prompt": [{"role": "user", "content": "say blue"}], "answer": "blue", "system": "be short"}]
    config, rewards, _ = _config(tmp_path, rows)
    prompts = read_prompts(config, rewards)
    assert prompts.splits[0].detection.startswith("detected grpo prompts (trl layout): prompt in 2 of 2 rows")
    assert [[(m.role, m.content) for m in p.messages] for p in prompts.train] == [
        [("user", "say red")], [("system", "be short"), ("user", "say blue")]]


def test_an_answer_already_there_and_a_missing_field_are_problems_at_their_lines(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "say red"}], "answer": "red"},
            {"messages": [{"role": "user", "content": "say blue"}, {"role": "assistant", "content": "blue"}], "answer": "blue"},
            {"messages": [{"role": "user", "content": "say pink"}], "reference": "pink"}]
    config, rewards, path = _config(tmp_path, rows)
    prompts = read_prompts(config, rewards)
    assert [str(p) for p in prompts.splits[0].problems] == [
        f"{path}:2: grpo's prompts end with the user's turn (the model writes the answer), and this one ends with an assistant turn; "
        "remove it, and keep a reference answer in a field the graders read (e.g. \"answer\": ... read as {{ item.answer }}).",
        f"{path}:3: the grader 'has_answer' reads item.answer, and this record has no field 'answer'; add it to every record, or change "
        "the grader (its fields are the record's keys)."]
    assert [p.line for p in prompts.train] == [1] and prompts.splits[0].kept == 1 and prompts.splits[0].records == 3


def test_trainer_data_reports_the_prompts_and_exits_2_on_problems(tmp_path, cli, tiny_model_dir):
    rows = [{"prompt": "say red", "answer": "red"}, {"prompt": "say blue"}]
    config, _, path = _config(tmp_path, rows, model=str(tiny_model_dir))
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    result = cli("data", "--config", str(tmp_path / "c.yaml"))
    assert result.returncode == 2
    assert f"{path}: detected grpo prompts (trl layout): prompt in 2 of 2 rows; 1 of 2 records are usable prompts" in result.stdout
    assert f"{path}:2: the grader 'has_answer' reads item.answer" in result.stdout


def test_a_prompt_longer_than_its_room_is_a_problem_not_cut(tmp_path, char_tokenizer):
    from trainer.data.templates import resolve_template
    from trainer.data.tokenize import Tokenizer

    config, rewards, path = _config(tmp_path, [{"prompt": "say red", "answer": "red"}, {"prompt": "say " + "x" * 80, "answer": "x"}])
    encode = Tokenizer(char_tokenizer, resolve_template("chatml", char_tokenizer), "assistant", 64)
    encoded, problems = encode_prompts(read_prompts(config, rewards).train, encode, 40)
    assert len(encoded) == 1 and encoded[0].input_ids[-len("assistant\n"):] == tuple(char_tokenizer.encode("assistant\n", add_special_tokens=False))
    assert [p.line for p in problems] == [2] and "data.max_seq_length less training.grpo.max_completion_length leaves 40" in str(problems[0])


def test_shipped_recipe_prompts_never_train_on_what_the_example_is_scored_on():
    """configs/recipes-grpo.yaml trains on data/recipes-grpo/train.jsonl and scores json_list_f1 on test.jsonl: at least
    200 test recipes, no training prompt among them, and none from the quickstart's recipes (its adapter is the start)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "data" / "recipes-grpo"

    def prompts(path, key):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [json.dumps(key(r)) for r in rows]

    trained = prompts(folder / "train.jsonl", lambda r: r["messages"])
    scored = prompts(folder / "test.jsonl", lambda r: r["messages"])
    quickstart = set(prompts(folder.parent / "recipes" / "train.jsonl", lambda r: r["messages"][:-1]))
    assert len(scored) >= 200 and len(set(scored)) == len(scored) and trained
    assert not set(trained) & set(scored)
    assert not quickstart & (set(trained) | set(scored))


def test_the_short_list_example_has_no_answers_and_its_grader_checks_the_answer_alone():
    """configs/recipes-grpo-short.yaml: prompts with nothing but the conversation (no reference anywhere), the same
    split as recipes-grpo (test recipes never trained on), and the python grader's scores on literal answers: half for
    the list's size (5 distinct items, or all of a shorter recipe's; 5/n beyond), half for the share found in the
    recipe's ingredient lines."""
    from pathlib import Path

    from trainer.config import load_config
    from trainer.graders import grade

    repo = Path(__file__).resolve().parent.parent
    folder = repo / "data" / "recipes-grpo-short"
    rows = {name: [json.loads(line) for line in (folder / name).read_text().splitlines()] for name in ("train.jsonl", "test.jsonl")}
    assert all(set(r) == {"messages"} and [m["role"] for m in r["messages"]] == ["system", "user"] for rs in rows.values() for r in rs)
    assert len(rows["test.jsonl"]) == 200 and not {json.dumps(r) for r in rows["train.jsonl"]} & {json.dumps(r) for r in rows["test.jsonl"]}
    config = load_config(repo / "configs" / "recipes-grpo-short.yaml", check_files=False)  # its start, runs/quickstart, comes from make demo
    (reward,) = load_rewards(config.training.grpo.graders)
    recipe = {"messages": [{"role": "user", "content": 'Ingredients: ["2 medium onions, sliced", "salt and pepper", "1 c. rice"]'}]}
    # the recipe has 3 ingredient lines, so 3 items is the full size (5 for a recipe of 5 or more)
    answers = {'["onions", "salt", "rice"]': 1.0,
               '["onions", "salt", "rice", "pepper", "medium", "sliced", "butter"]': 0.5 * 5 / 7 + 0.5 * 6 / 7,
               '["onions"]': 0.5 / 3 + 0.5,  # one item: what GRPO found when "at most 5" scored it in full
               '["onions", "onions"]': 0.5 * (1 / 3) * (1 / 2) + 0.5, '["onions", "butter"]': 0.5 * 2 / 3 + 0.5 / 2,
               "Onions and salt.": 0.0, "[]": 0.0}
    for text, expected in answers.items():
        graded = grade(reward.grader, {"output_text": text}, recipe)
        assert graded.error is None and abs(graded.score - expected) < 1e-9, (text, graded)
