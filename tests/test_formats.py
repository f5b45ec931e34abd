"""Reading every supported file type and data format into one shape."""
import json

import pytest

from conftest import MINIMAL
from trainer.config import parse_config
from trainer.data.formats import Message
from trainer.data.pipeline import load_examples, split_validation
from trainer.data.records import read_hub_dataset, read_records
from trainer.errors import UserError


def config_for(path, **data):
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in data.items())
    return parse_config(MINIMAL.replace("data/recipes/train.jsonl", str(path)).replace("training:", extra.rstrip("\n") + "\ntraining:" if extra else "training:"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_messages_format_detected_with_counts(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    examples, report = load_examples(str(path), config_for(path))
    assert report.detection == "detected messages format: messages in 3 of 3 rows"
    assert examples[0].messages == (Message("user", "q", False), Message("assistant", "a", True))
    assert (examples[2].file, examples[2].line) == (str(path), 3)


def test_sharegpt_roles_are_mapped(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    examples, report = load_examples(str(path), config_for(path))
    assert report.detection == "detected sharegpt format: conversations in 1 of 1 rows"
    assert [m.role for m in examples[0].messages] == ["system", "user", "assistant"]


def test_alpaca_input_joins_the_instruction(tmp_path):
    rows = [{"instruction": "Add", "input": "1 2", "output": "3"}, {"instruction": "Say hi", "input": "", "output": "hi"}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    examples, report = load_examples(str(path), config_for(path))
    assert report.detection == "detected alpaca format: instruction/input/output in 2 of 2 rows"
    assert examples[0].messages == (Message("user", "Add\n\n1 2", False), Message("assistant", "3", True))
    assert examples[1].messages[0] == Message("user", "Say hi", False)


def test_prompt_completion_and_system_column(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "completion": "a", "system": "be brief"}])
    examples, report = load_examples(str(path), config_for(path))
    assert report.detection.startswith("detected prompt_completion format")
    assert examples[0].messages == (Message("system", "be brief", False), Message("user", "q", False), Message("assistant", "a", True))


def test_text_format(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "once upon a time"}])
    examples, _ = load_examples(str(path), config_for(path, train_on="all"))
    assert examples[0].text == "once upon a time" and examples[0].messages is None


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "answer": "a"}])
    cfg = config_for(path)
    cfg = cfg.replace(data=cfg.data.replace(columns=cfg.data.columns.replace(prompt="question", completion="answer")))
    examples, report = load_examples(str(path), cfg)
    assert report.detection == "detected prompt_completion format: question/answer in 1 of 1 rows"
    assert examples[0].messages[1] == Message("assistant", "a", True)


def test_csv_with_messages_as_json(tmp_path):
    path = tmp_path / "d.csv"
    messages = json.dumps([{"role": "user", "content": "q, with comma"}, {"role": "assistant", "content": "a"}])
    path.write_text("messages\n" + '"' + messages.replace('"', '""') + '"\n')
    examples, _ = load_examples(str(path), config_for(path))
    assert examples[0].messages[0].content == "q, with comma"


def test_parquet_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "a2"}]), folder / "a.parquet")
    write_jsonl(folder / "b.jsonl", [{"prompt": "q3", "completion": "a3"}])
    records, problems = read_records(str(folder))
    assert [r.row["prompt"] for r in records] == ["q1", "q2", "q3"] and not problems
    assert [(r.file.endswith(".parquet"), r.line) for r in records] == [(True, 1), (True, 2), (False, 1)]


def test_json_array_keeps_line_numbers(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n\n  {"prompt": "c", "completion": "d"}\n]\n')
    records, _ = read_records(str(path))
    assert [r.line for r in records] == [2, 4]


def test_explicit_format_skips_detection(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "q", "completion": "a"}])
    _, report = load_examples(str(path), config_for(path, format="prompt_completion"))
    assert report.detection == "format prompt_completion (set in the config)"


def test_validation_split_is_seeded_and_disjoint():
    items = list(range(100))
    train_a, val_a = split_validation(items, 0.1, seed=1)
    train_b, val_b = split_validation(items, 0.1, seed=1)
    _, val_c = split_validation(items, 0.1, seed=2)
    assert val_a == val_b and val_a != val_c
    assert len(val_a) == 10 and not set(val_a) & set(train_a) and len(train_a) + len(val_a) == 100


def test_hub_dataset_offline_gives_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read these at import, which another test may have done already: offline for them too, or the
    # test waits for the network's timeouts (25 s in a whole run) before the same message
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"could not load the Hub data set 'someone/nothing' \(split 'train'\).*cannot be reached.*point data.train at the local"):
        read_hub_dataset("someone/nothing:train")


def test_hub_loader_reads_a_local_copy(tmp_path):
    # The same datasets.load_dataset call that reads a Hub id reads a local copy of a data set repository.
    repo = tmp_path / "org_name"
    repo.mkdir()
    write_jsonl(repo / "train.jsonl", [{"prompt": "q", "completion": "a"}] * 3)
    records = read_hub_dataset(f"{repo}:train")
    assert len(records) == 3 and records[0].row == {"prompt": "q", "completion": "a"} and records[0].file == f"{repo}:train"


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_openai_function_calling_record(tmp_path):
    from trainer.data.formats import ToolCall

    row = {"tools": [WEATHER_TOOL], "messages": [
        {"role": "system", "content": "Weather bot."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}], "name": "ana"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                              "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "assistant", "content": "<think>\nThe tool said 18.\n</think>\n\nIt is 18 C.", "weight": 1},
        {"role": "user", "content": "And Rome?"},
        {"role": "assistant", "content": "Not known.", "reasoning_content": "No call made.", "weight": 0}]}
    path = write_jsonl(tmp_path / "t.jsonl", [row])
    examples, report = load_examples(str(path), config_for(path))
    assert not report.problems
    e = examples[0]
    assert e.tools == (WEATHER_TOOL,)
    assert e.messages[1] == Message("user", "Weather\nin Paris?", False, name="ana")
    assert e.messages[2] == Message("assistant", "", True, (ToolCall("get_weather", {"city": "Paris"}, "call_1"),))
    assert e.messages[3] == Message("tool", "18 C", False, name="get_weather", tool_call_id="call_1")
    assert e.messages[4] == Message("assistant", "It is 18 C.", True, reasoning="The tool said 18.")
    assert e.messages[6] == Message("assistant", "Not known.", False, reasoning="No call made.")


def test_legacy_functions_and_function_call(tmp_path):
    from trainer.data.formats import ToolCall

    row = {"functions": [{"name": "get_weather", "parameters": {"type": "object"}}], "messages": [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"role": "function", "name": "get_weather", "content": "18 C"},
        {"role": "assistant", "content": "18 C."}]}
    path = write_jsonl(tmp_path / "f.jsonl", [row])
    examples, report = load_examples(str(path), config_for(path))
    assert not report.problems
    e = examples[0]
    assert e.tools == ({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},)
    assert e.messages[1].tool_calls == (ToolCall("get_weather", {"city": "Paris"}, "call00001"),)
    assert e.messages[2] == Message("tool", "18 C", False, name="get_weather", tool_call_id="call00001")


def test_sharegpt_function_call_and_observation(tmp_path):
    row = {"tools": json.dumps([WEATHER_TOOL]), "conversations": [
        {"from": "human", "value": "Paris?"},
        {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
        {"from": "observation", "value": "18 C"},
        {"from": "gpt", "value": "18 C."}]}
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    examples, report = load_examples(str(path), config_for(path))
    assert not report.problems
    e = examples[0]
    assert [m.role for m in e.messages] == ["user", "assistant", "tool", "assistant"]
    assert e.messages[1].tool_calls[0].arguments == {"city": "Paris"} and e.messages[2].tool_call_id == e.messages[1].tool_calls[0].id
    assert e.tools == (WEATHER_TOOL,)


@pytest.mark.parametrize("bad", [None, 1, "x", [], {}, [None], [{"function": None}], [{"function": {"name": 3}}], {"name": "f"}, True])
def test_odd_tool_shapes_are_problems_never_tracebacks(tmp_path, bad):
    from trainer.data.formats import columns_for, to_example
    from trainer.data.records import Record

    base = {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    rows = [
        {"tools": bad, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {**base, "tool_calls": bad}]},
        {"messages": [{"role": "user", "content": "q"}, {**base, "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": bad}}]}]},
        {"messages": [{"role": "user", "content": bad}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, base, {"role": "tool", "tool_call_id": bad, "content": "r"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": bad}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": bad}]},
    ]
    for row in rows:
        fmt = "sharegpt" if "conversations" in row else "messages"
        example, problems = to_example(Record(row, "f.jsonl", 1), fmt, columns_for(fmt, {}), "assistant")
        assert (example is None) == bool(problems)
        assert all(str(p).startswith("f.jsonl:1: ") for p in problems)


def test_thinking_is_reasoning_as_gpt_oss_data_writes_it():
    # HuggingFaceH4/Multilingual-Thinking (OpenAI's gpt-oss fine-tuning guide) keeps the analysis in `thinking`, null elsewhere
    from trainer.data.formats import columns_for, to_example
    from trainer.data.records import Record

    row = {"reasoning_language": "French", "messages": [
        {"role": "system", "content": "reasoning language: French", "thinking": None},
        {"role": "user", "content": "Salut ?", "thinking": None},
        {"role": "assistant", "content": "Bonjour !", "thinking": "L'utilisateur salue."}]}
    example, problems = to_example(Record(row, "f.jsonl", 1), "messages", columns_for("messages", {}), "assistant")
    assert problems == [] and example.messages[-1].reasoning == "L'utilisateur salue." and example.messages[1].reasoning is None
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "thinking": 3}]}
    _, problems = to_example(Record(bad, "f.jsonl", 2), "messages", columns_for("messages", {}), "assistant")
    assert [str(p) for p in problems] == ["f.jsonl:2: message 2 'thinking' must be text, got 3."]
