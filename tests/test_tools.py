"""Reading tool calls back out of answers, and the tool_call_match metric, from literal strings."""
import json

import pytest

from trainer.errors import UserError
from trainer.tools import load_tools, parse_tool_calls, tool_call_match

PARIS = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>',
    '{"name": "get_weather", "parameters": {"unit": "c", "city": "Paris"}}',  # Llama 3.x
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}, "id": "abcdefghi"}]',  # Mistral
    '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"c\\"}"}',  # unclosed, JSON-text arguments
])
def test_layouts_parse_to_the_same_call(text):
    assert parse_tool_calls(text) == [PARIS]


def test_text_malformed_and_several_calls():
    assert parse_tool_calls("It is sunny.") == []
    assert parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par</tool_call>') is None
    assert parse_tool_calls('{"city": "Paris"}') is None  # JSON, but not a call
    two = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": 1}}\n</tool_call>'
    assert parse_tool_calls(two) == [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]


def test_tool_call_match_literal():
    call = json.dumps([PARIS])
    predictions = [
        '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}\n</tool_call>',  # right, keys reordered
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}\n</tool_call>',  # wrong argument
        "I cannot check the weather.",  # no call where one is expected
        "Hello!",  # text where text is expected
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',  # a call where text is expected
    ]
    references = [call, call, call, "Hi there.", "Hi there."]
    assert tool_call_match(predictions, references) == {"tool_call_match": 2 / 5, "tool_call_wellformed": 2 / 3}


def test_load_tools_accepts_bare_functions_and_explains_bad_files(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}]))
    assert load_tools(str(path)) == [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    path.write_text("[{")
    with pytest.raises(UserError, match=r"tools.json:1: invalid JSON"):
        load_tools(str(path))


def test_the_server_reads_hermes_calls_as_the_metric_does():
    from trainer.serve.toolcalls import split_tool_calls

    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "parameters": {"unit": "c", "city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"c\\"}"}')  # unclosed
    content, calls = split_tool_calls(text)
    assert content == "Let me check."
    assert [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls] == [PARIS, PARIS]
    assert parse_tool_calls(text) == [PARIS, PARIS]
    broken = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Par</tool_call>'
    assert split_tool_calls(broken) == (broken, []) and parse_tool_calls(broken) is None
