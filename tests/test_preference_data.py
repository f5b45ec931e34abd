"""Preference pairs: each layout read into the same pairs, each problem reported with file:line, answer-only masks."""
import json
import re
import textwrap

import pytest
from conftest import REPO, make_char_tokenizer, read_expectations

from trainer.cli import main
from trainer.config.validate import parse_config
from trainer.data.pipeline import prepare_data
from trainer.data.templates import CHATML
from trainer.data.tokenize import IGNORE

CORPUS = REPO / "tests" / "broken_pairs"
EXPECTED = read_expectations(CORPUS / "expected.txt")
SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "say red"}
RED, BLUE = {"role": "assistant", "content": "red"}, {"role": "assistant", "content": "blue"}
LAYOUTS = {
    "openai": {"input": {"messages": [SYSTEM, USER]}, "preferred_output": [RED], "non_preferred_output": [BLUE]},
    "trl_conversational": {"prompt": [SYSTEM, USER], "chosen": [RED], "rejected": [BLUE]},
    "trl_implicit_prompt": {"chosen": [SYSTEM, USER, RED], "rejected": [SYSTEM, USER, BLUE]},
    "trl_text_with_system_column": {"system": "Be brief.", "prompt": "say red", "chosen": "red", "rejected": "blue"},
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    make_char_tokenizer(CHATML).save_pretrained(path)
    return path


def config_for(tmp_path, tokenizer_dir, train, objective="dpo", extra=""):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""\
        model:
          name_or_path: {tokenizer_dir}
        data:
          train: {train}
          validation_split: 0
        training:
          objective: {objective}
          epochs: 1
        """) + extra)
    return config


def text(tokenizer, ids):
    return "".join(tokenizer.convert_ids_to_tokens(list(ids)))  # the character tokenizer's decode puts spaces between


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_corpus_is_complete():
    assert {p.name for p in CORPUS.iterdir() if p.name != "expected.txt"} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_pairs_are_explained(name, tmp_path, tokenizer_dir, capsys):
    assert main(["data", "--config", str(config_for(tmp_path, tokenizer_dir, CORPUS / name))]) == 2
    output = "".join(capsys.readouterr())
    for pattern in EXPECTED[name]:
        assert re.search(pattern, output), f"{pattern!r} not in:\n{output}"
    assert "Traceback" not in output


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_gives_the_same_pair_and_masks_only_the_answer(layout, tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "pairs.jsonl", [LAYOUTS[layout]])
    config = parse_config(config_for(tmp_path, tokenizer_dir, path).read_text())
    tokenizer = make_char_tokenizer(CHATML)
    data = prepare_data(config, tokenizer)
    (pair,) = data.train
    chosen_text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nsay red<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    assert text(tokenizer, pair.chosen.input_ids) == chosen_text
    assert text(tokenizer, pair.rejected.input_ids) == chosen_text.replace("\nred<", "\nblue<")
    trained = [t for t, label in zip(pair.chosen.input_ids, pair.chosen.labels) if label != IGNORE]
    assert text(tokenizer, trained) == "red<|im_end|>"  # the answer and the token that closes its turn, nothing of the prompt
    assert data.splits[0].detection.startswith("detected preference pairs (" + ("openai" if layout == "openai" else "trl"))


def test_earlier_assistant_turns_are_context_not_trained(tmp_path, tokenizer_dir):
    turns = [USER, {"role": "assistant", "content": "red"}, {"role": "user", "content": "again"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": turns, "chosen": [RED], "rejected": [BLUE]}])
    tokenizer = make_char_tokenizer(CHATML)
    (pair,) = prepare_data(parse_config(config_for(tmp_path, tokenizer_dir, path).read_text()), tokenizer).train
    for side, answer in ((pair.chosen, "red"), (pair.rejected, "blue")):
        assert text(tokenizer, [t for t, label in zip(side.input_ids, side.labels) if label != IGNORE]) == answer + "<|im_end|>"


def test_tool_calls_as_answers(tmp_path, tokenizer_dir):
    """OpenAI's preference format with tools: a right call against a wrong one, rendered by the hermes template."""
    tool = {"type": "function", "function": {"name": "paint", "parameters": {"type": "object", "properties": {"color": {"type": "string"}}}}}

    def call(color):
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "paint", "arguments": json.dumps({"color": color})}}]}

    path = write_jsonl(tmp_path / "pairs.jsonl", [{"input": {"messages": [USER], "tools": [tool]}, "preferred_output": [call("red")],
                                                   "non_preferred_output": [call("blue")]}])
    config = parse_config(config_for(tmp_path, tokenizer_dir, path, extra="").read_text(), overrides=["data.chat_template=hermes"])
    tokenizer = make_char_tokenizer(CHATML)
    (pair,) = prepare_data(config, tokenizer).train
    chosen = text(tokenizer, [t for t, label in zip(pair.chosen.input_ids, pair.chosen.labels) if label != IGNORE])
    assert chosen.startswith("<tool_call>\n") and '"color": "red"' in chosen and "say red" not in chosen
    assert '"paint"' in text(tokenizer, pair.chosen.input_ids[: pair.chosen.labels.index(next(x for x in pair.chosen.labels if x != IGNORE))])


def test_sft_on_pairs_says_which_objective(tmp_path, tokenizer_dir, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [LAYOUTS["openai"]])
    assert main(["data", "--config", str(config_for(tmp_path, tokenizer_dir, path, objective="sft"))]) == 2
    output = "".join(capsys.readouterr())
    assert "the data holds preference pairs" in output and "set training.objective: dpo (or orpo)" in output


def test_report_counts_pairs(tmp_path, tokenizer_dir, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [LAYOUTS[k] for k in sorted(LAYOUTS)])
    assert main(["data", "--config", str(config_for(tmp_path, tokenizer_dir, path))]) == 0
    out = capsys.readouterr().out
    assert "detected preference pairs" in out and "4 records, 4 usable, 0 problem(s)" in out
    assert "Pairs: 4 for training" in out


def test_shipped_recipe_pairs_never_train_on_what_the_example_is_scored_on():
    """configs/recipes-dpo.yaml scores json_list_f1 on data/recipes-dpo/test.jsonl and reward accuracy on its validation
    pairs: no training pair may come from those recipes, and the quickstart's training recipes stay out of the test set."""
    folder = REPO / "data" / "recipes-dpo"

    def prompts(name, key):
        rows = [json.loads(line) for line in (folder / name).read_text().splitlines() if line.strip()]
        return {json.dumps(key(r)) for r in rows}

    trained = prompts("train.jsonl", lambda r: r["input"]["messages"])
    scored = prompts("test.jsonl", lambda r: r["messages"][:-1])
    validated = prompts("validation.jsonl", lambda r: r["input"]["messages"])
    quickstart = prompts("../recipes/train.jsonl", lambda r: r["messages"][:-1])
    assert trained and scored and validated <= scored
    assert not trained & scored
    assert not quickstart & scored
