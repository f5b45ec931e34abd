"""`trainer data` explains tool-calling data: every refusal with its reason, the fields found, the template's
features, and (--show, --json) the examples as the model sees them with the trained text marked."""
import json
import textwrap

import pytest
from conftest import make_char_tokenizer

from trainer.cli import main

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
ROW = {"tools": [WEATHER], "messages": [
    {"role": "user", "content": "Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    {"role": "assistant", "content": "18 C."}]}


@pytest.fixture
def setup(tmp_path):
    from trainer.data.templates import CHATML

    tok = tmp_path / "tok"
    make_char_tokenizer(CHATML).save_pretrained(tok)
    data = tmp_path / "tools.jsonl"
    data.write_text((json.dumps(ROW) + "\n") * 2)
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""\
        model:
          name_or_path: {tok}
        data:
          train: {data}
          validation_split: 0
        training:
          epochs: 1
        """))
    return str(config), str(data)


def test_every_record_refused_still_explains_why(setup, capsys):
    config, data = setup
    assert main(["data", "--config", config]) == 2
    out = capsys.readouterr().out
    assert "2 records, 0 usable, 2 problem(s)" in out
    assert "found: tools in 2 (100%), tool calls in 2 (100%)" in out
    assert "2 x the example has 'tools', but the chat template of tok ignores them" in out
    assert f"{data}:1: the example has 'tools'" in out and "set data.chat_template: hermes" in out
    assert "not trained on ChatML" not in out  # a ChatML model: hermes is its own layout
    assert "Chat template features: does not render tools" in out
    assert "No usable training examples: the problems above say why (2 in all)." in out


def test_show_marks_exactly_the_trained_text(setup, capsys):
    config, _ = setup
    assert main(["data", "--config", config, "--set", "data.chat_template=hermes", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "Chat template features: renders tools, keeps reasoning in every turn, keeps the system prompt" in out
    assert ('<|im_start|>assistant\n⟦<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>⟧\n'
            '<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n⟦18 C.<|im_end|>⟧\n') in out


def test_json_carries_the_rendered_text_and_trained_spans(setup, capsys):
    config, _ = setup
    assert main(["data", "--config", config, "--set", "data.chat_template=hermes", "--show", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"][0]["fields"]["tool_calls"] == 2
    shown = report["shown"]
    assert len(shown) == 2 and shown[0]["line"] == 1
    text = shown[0]["text"]
    assert [text[a:b] for a, b in shown[0]["trained"]] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>', "18 C.<|im_end|>"]


def test_ui_preview_shows_tool_calls_and_reasoning_readably(tmp_path):
    from trainer.data.records import read_records
    from ui.app import _readable

    row = dict(ROW)
    row["messages"] = ROW["messages"][:3] + [{"role": "assistant", "content": "<think>\nIt said 18.\n</think>\n\n18 C."}]
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row) + "\n")
    records, _ = read_records(str(path))
    assert _readable(records, "messages")[0] == [("tools: get_weather\nuser: Paris?\nassistant calls get_weather({\"city\": \"Paris\"})\n"
                                               "tool (get_weather) -> 18 C\nassistant [reasoning] It said 18.\nassistant: 18 C.")]


def test_turns_each_makes_one_example_per_answer(setup, capsys):
    config, _ = setup
    assert main(["data", "--config", config, "--set", "data.chat_template=hermes", "--set", "data.turns=each", "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "Examples: 4 for training" in out  # two records, two answers each
    assert out.count("<|im_end|>⟧") == 2  # each example trains only its last answer
    assert main(["data", "--config", config, "--set", "data.turns=each"]) == 2
    assert "2 records, 0 usable, 2 problem(s)" in capsys.readouterr().out  # each record's refusal said once


def test_named_templates_tool_use_for_examples_with_tools(tmp_path, capsys):
    # A tokenizer with named templates (Hermes 3, Command-R): apply_chat_template(tools=...) picks tool_use, so trainer
    # renders the examples with tools with it and the others with default, and says how many each.
    from trainer.data.templates import CHATML, HERMES

    tok = tmp_path / "tok"
    make_char_tokenizer({"default": CHATML, "tool_use": HERMES}).save_pretrained(tok)
    data = tmp_path / "mixed.jsonl"
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    data.write_text(json.dumps(ROW) + "\n" + json.dumps(plain) + "\n" + json.dumps(plain) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name_or_path: {tok}\ndata:\n  train: {data}\n  validation_split: 0\ntraining:\n  epochs: 1\n")
    assert main(["data", "--config", str(config), "--show", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"][0]["kept"] == 3 and report["splits"][0]["variants"] == {"default": 2, "tool_use": 1}
    text = report["shown"][0]["text"]
    assert text.startswith("<|im_start|>system\n# Tools") and [text[a:b] for a, b in report["shown"][0]["trained"]][-1] == "18 C.<|im_end|>"
    assert main(["data", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "the model's templates: default for 2 example(s), tool_use for 1 example(s) (tool_use for those with tools" in out
    assert "Chat template features: default: does not render tools" in out and "tool_use: renders tools" in out
    # data.chat_template: tool_use renders every example with it (the built-in hermes here renders tool-less ones too)
    assert main(["data", "--config", str(config), "--set", "data.chat_template=tool_use", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"][0]["variants"] == {"tool_use": 3}
    assert main(["data", "--config", str(config), "--set", "data.chat_template=rag"]) != 0
    assert "'rag' is not a built-in template (chatml, zephyr, llama3, hermes) nor one of the model's named templates: its templates are 'default', 'tool_use'" in capsys.readouterr().err
