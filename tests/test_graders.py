"""The graders (trainer/graders/) and `trainer grade`: every grader type, every template form, the outcomes of a grader
that cannot score, the python grader's limits, and score_model against real OpenAI-compatible servers."""
import json
import math
import socket
import threading
import time

import pytest

from conftest import run_trainer
from trainer.errors import UserError
from trainer.graders import fields_read, grade, load_grader, parse_grader

OUT = "{{ sample.output_text }}"


def check(operation: str, output: str, reference: str) -> float:
    grader = parse_grader({"type": "string_check", "operation": operation, "input": OUT, "reference": reference})
    result = grade(grader, {"output_text": output}, {})
    assert result.error is None
    return result.score


# --- string_check -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operation, output, reference, score", [
    ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0), ("ne", "paris", "Paris", 1.0), ("ne", "Paris", "Paris", 0.0),
    ("like", "The capital is Paris.", "Paris", 1.0), ("like", "The capital is paris.", "Paris", 0.0),
    ("ilike", "THE CAPITAL IS PARIS.", "Paris", 1.0), ("ilike", "Rome", "Paris", 0.0),
])
def test_string_check_operations(operation, output, reference, score):
    assert check(operation, output, reference) == score


# --- templates --------------------------------------------------------------------------------------------------

def render_with(reference: str, sample: dict, item: dict):
    """The grade of an eq check whose reference is `reference`, against the output "X"."""
    grader = parse_grader({"type": "string_check", "operation": "eq", "input": "X", "reference": reference})
    return grade(grader, sample, item)


@pytest.mark.parametrize("template, sample, item", [
    ("{{ sample.output_text }}", {"output_text": "X"}, {}),
    ("{{ item.answer }}", {"output_text": ""}, {"answer": "X"}),
    ("{{ item.meta.source.name }}", {"output_text": ""}, {"meta": {"source": {"name": "X"}}}),
    ("{{ item.answers.1 }}", {"output_text": ""}, {"answers": ["Y", "X"]}),
    ("{{ item['a key'] }}", {"output_text": ""}, {"a key": "X"}),
    ("{{ item.items }}", {"output_text": ""}, {"items": "X"}),  # the field `items`, not the dict's method
    ("{{ sample.output_json.city }}", {"output_text": '{"city": "X"}'}, {}),  # output_json read from a JSON output_text
    ("{{ sample.output_json.city }}", {"output_text": "prose", "output_json": {"city": "X"}}, {}),
    ("{{ sample.output_tools.0.function.name }}", {"output_text": "", "output_tools": [{"function": {"name": "X"}}]}, {}),
])
def test_every_template_form_reads_its_field(template, sample, item):
    result = render_with(template, sample, item)
    assert (result.score, result.error) == (1.0, None)


def test_lists_and_booleans_render_as_json():
    grader = parse_grader({"type": "string_check", "operation": "eq", "input": '["a", "b"] true', "reference": "{{ item.list }} {{ item.flag }}"})
    assert grade(grader, {"output_text": ""}, {"list": ["a", "b"], "flag": True}).score == 1.0


def test_a_missing_item_field_is_a_recorded_failure_naming_it():
    result = render_with("{{ item.answer }}", {"output_text": "X"}, {"question": "q", "solution": "X"})
    assert result.score == 0.0
    assert "item.answer" in result.error and "question, solution" in result.error


def test_a_missing_nested_field_names_the_whole_path():
    result = render_with("{{ item.meta.source }}", {"output_text": "X"}, {"meta": {"origin": "web"}})
    assert result.score == 0.0 and "item.meta.source" in result.error and "origin" in result.error


def test_output_json_of_an_answer_that_is_not_json_says_so():
    result = render_with("{{ sample.output_json.city }}", {"output_text": "not json"}, {})
    assert result.score == 0.0 and "not JSON" in result.error


def test_the_sandbox_refuses_python_internals_as_a_failed_line():
    result = render_with("{{ sample.output_text.__class__.__mro__ }}", {"output_text": "X"}, {})
    assert result.score == 0.0 and "__class__" in result.error


@pytest.mark.parametrize("template, says", [
    ("{{ answer }}", "reads answer"),
    ("{{ sample.output }}", "sample.output"),
    ("{{ item.answer ", "does not parse"),
])
def test_bad_templates_are_refused_when_read(template, says):
    with pytest.raises(UserError, match=says) as error:
        parse_grader({"type": "string_check", "operation": "eq", "input": OUT, "reference": template})
    assert error.value.problems[0].path == "reference"


# --- text_similarity --------------------------------------------------------------------------------------------

def similarity(metric: str, output: str, reference: str) -> float:
    grader = parse_grader({"type": "text_similarity", "evaluation_metric": metric, "input": OUT, "reference": "{{ item.ref }}"})
    result = grade(grader, {"output_text": output}, {"ref": reference})
    assert result.error is None
    return result.score


def test_similarity_metrics_hand_checked():
    # kitten/sitting: longest common subsequence "ittn" (4 characters): 2 * 4 / (6 + 7)
    assert similarity("fuzzy_match", "kitten", "sitting") == pytest.approx(8 / 13)
    # "the cat sat" against "the cat sat on the mat": unigrams P 3/3, R 3/6 -> F 2/3; bigrams P 2/2, R 2/5 -> F 4/7
    assert similarity("rouge_1", "the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert similarity("rouge_2", "the cat sat", "the cat sat on the mat") == pytest.approx(4 / 7)
    assert similarity("rouge_l", "the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # a b c d e / a b c d f: n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty)
    assert similarity("bleu", "a b c d e", "a b c d f") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # GLEU: 10 of the 14 1- to 4-grams match on either side
    assert similarity("gleu", "a b c d e", "a b c d f") == pytest.approx(10 / 14)
    assert similarity("bleu", "the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_rouge_n_is_rouge_scores(n):
    from rouge_score import rouge_scorer

    output, reference = "the quick brown fox jumps over the lazy dog", "a quick brown fox jumped over the lazy dog today"
    expected = rouge_scorer.RougeScorer([f"rouge{n}"]).score(reference, output)[f"rouge{n}"].fmeasure
    assert similarity(f"rouge_{n}", output, reference) == pytest.approx(expected)


def test_cosine_is_refused_with_what_to_use_instead():
    with pytest.raises(UserError, match="embedding models.*rouge_l"):
        parse_grader({"type": "text_similarity", "evaluation_metric": "cosine", "input": OUT, "reference": "x"})


def test_meteor_needs_wordnet_or_is_refused_saying_how_to_get_it():
    import nltk

    grader = {"type": "text_similarity", "evaluation_metric": "meteor", "input": OUT, "reference": "{{ item.ref }}"}
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        with pytest.raises(UserError, match="nltk.downloader wordnet"):
            parse_grader(grader)
    else:
        assert similarity("meteor", "the cat sat on the mat", "the cat sat on the mat") > 0.99


# --- builtin ----------------------------------------------------------------------------------------------------

def builtin(metric: str, output: str, item: dict, **keys) -> float:
    result = grade(parse_grader({"type": "builtin", "metric": metric, **keys}), {"output_text": output}, item)
    assert result.error is None
    return result.score


def test_builtin_metrics_hand_checked():
    ref = {"reference": "{{ item.answer }}"}
    # {a, b} against {b, c}: precision 1/2, recall 1/2
    assert builtin("json_list_f1", '["a", "b"]', {"answer": ["b", "c"]}, **ref) == 0.5
    assert builtin("json_list_f1", "a and b", {"answer": ["b", "c"]}, **ref) == 0.0  # not a JSON list: a real 0, not a failure
    # the cat sat / a cat sat down: 2 common tokens, precision 2/3, recall 2/4
    assert builtin("token_f1", "the cat sat", {"answer": "a cat sat down"}, **ref) == pytest.approx(4 / 7)
    assert builtin("exact_match", "Paris.", {"answer": "paris"}, **ref) == 1.0
    assert builtin("rouge_l", "the cat sat", {"answer": "the cat sat on the mat"}, **ref) == pytest.approx(2 / 3)


def test_builtin_tool_call_match():
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    ref = {"reference": "{{ item.calls }}"}
    assert builtin("tool_call_match", call, {"calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}, **ref) == 1.0
    assert builtin("tool_call_match", call, {"calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]}, **ref) == 0.0


def test_builtin_json_schema():
    schema = {"schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}
    assert builtin("json_schema", '{"city": "Paris"}', {}, **schema) == 1.0
    assert builtin("json_schema", '{"city": 3}', {}, **schema) == 0.0
    assert builtin("json_schema", "Paris", {}, **schema) == 0.0
    with pytest.raises(UserError, match="schema: the schema is not a valid JSON Schema"):
        parse_grader({"type": "builtin", "metric": "json_schema", "schema": {"type": "objekt"}})
    with pytest.raises(UserError, match="needs `reference`"):
        parse_grader({"type": "builtin", "metric": "token_f1"})


# --- python -----------------------------------------------------------------------------------------------------

def python_grade(source: str, sample: dict | None = None, item: dict | None = None, **limits):
    return grade(parse_grader({"type": "python", "source": source, **limits}), sample or {"output_text": "hello"}, item or {})


def test_python_grader_scores_from_sample_and_item():
    source = "def grade(sample, item):\n    print('noise on stdout')\n    return len(sample['output_text']) / item['n'] + sample['output_json']['x']\n"
    result = python_grade(source, {"output_text": '{"x": 1}'}, {"n": 8})
    assert (result.score, result.error) == (2.0, None)


@pytest.mark.parametrize("body, says", [
    ("raise ValueError('boom')", "raised ValueError: boom"),
    ("return '1'", "returned str '1', not a number"),
    ("return None", "returned NoneType"),
    ("return True", "returned bool"),
    ("return float('nan')", "returned nan, not a finite number"),
    ("import os; os._exit(3)", "exited with code 3"),
])
def test_python_grader_failures_score_0_with_the_reason(body, says):
    result = python_grade(f"def grade(sample, item):\n    {body}\n")
    assert result.score == 0.0 and says in result.error


def test_python_grader_time_limit():
    started = time.monotonic()
    result = python_grade("import time\ndef grade(sample, item):\n    time.sleep(60)\n", timeout=1)
    assert result.score == 0.0 and "longer than 1 s" in result.error
    assert time.monotonic() - started < 10


def test_python_grader_memory_limit():
    result = python_grade("def grade(sample, item):\n    block = bytearray(1024 * 2**20)\n    return 1.0\n", memory_mb=256)
    assert result.score == 0.0 and "ran out of memory (the limit is 256 MB" in result.error


@pytest.mark.parametrize("body", [
    "import socket\n    socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
    "import socket\n    socket.create_connection(('127.0.0.1', 9))",
    "import urllib.request\n    urllib.request.urlopen('http://127.0.0.1:9')",
])
def test_python_grader_cannot_open_sockets(body):
    result = python_grade(f"def grade(sample, item):\n    {body}\n    return 1.0\n")
    assert result.score == 0.0 and "network access is blocked" in result.error


def test_python_source_is_checked_when_read():
    with pytest.raises(UserError, match=r"does not compile: .*line 1"):
        parse_grader({"type": "python", "source": "def grade(sample, item)\n    return 1\n"})
    with pytest.raises(UserError, match="defines no function `grade`"):
        parse_grader({"type": "python", "source": "def score(sample, item):\n    return 1\n"})


# --- multi ------------------------------------------------------------------------------------------------------

MULTI = {
    "type": "multi", "name": "city",
    "graders": {
        "named": {"type": "string_check", "operation": "ilike", "input": OUT, "reference": "{{ item.city }}"},
        "close": {"type": "text_similarity", "evaluation_metric": "rouge_1", "input": OUT, "reference": "{{ item.answer }}"},
    },
    "calculate_output": "0.25 * named + 0.75 * close",
}


def test_multi_combines_named_scores_with_the_formula():
    result = grade(parse_grader(MULTI), {"output_text": "the cat sat in Paris"}, {"city": "paris", "answer": "the cat sat"})
    # named: 1; close: rouge_1 of 3 common unigrams, P 3/5, R 3/3 -> F 3/4
    assert result.parts["named"].score == 1.0 and result.parts["close"].score == pytest.approx(0.75)
    assert result.score == pytest.approx(0.25 + 0.75 * 0.75) and result.error is None


def test_multi_formula_dividing_by_zero_fails_the_line():
    grader = parse_grader({**MULTI, "calculate_output": "named / close"})
    result = grade(grader, {"output_text": "Paris"}, {"city": "Paris", "answer": "something else"})
    assert result.score == 0.0 and "divides by zero" in result.error and "close=0" in result.error
    assert result.parts["named"].score == 1.0


def test_multi_fails_when_one_of_its_graders_fails():
    result = grade(parse_grader(MULTI), {"output_text": "Paris"}, {"city": "Paris"})
    assert result.score == 0.0 and "close" in result.error and "item.answer" in result.error
    assert result.parts["named"].error is None and result.parts["close"].error is not None


@pytest.mark.parametrize("formula, says", [
    ("named + nope", "`nope` is not one of the graders"),
    ("named ** 2", "not allowed in a formula"),
    ("__import__('os')", "the functions are"),
    ("named +", "is not a formula"),
])
def test_multi_formula_is_checked_when_read(formula, says):
    with pytest.raises(UserError, match=says) as error:
        parse_grader({**MULTI, "calculate_output": formula})
    assert error.value.problems[0].path == "calculate_output"


# --- validation -------------------------------------------------------------------------------------------------

def test_every_problem_at_once_with_key_paths_and_lines(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "type: multi\n"
        "graders:\n"
        "  a:\n"
        "    type: string_chek\n"
        "  b:\n"
        "    type: string_check\n"
        "    operation: equals\n"
        "    input: '{{ sample.output_text }}'\n"
        "    referense: '{{ item.answer }}'\n"
        "calculate_output: a + b\n"
    )
    with pytest.raises(UserError) as error:
        load_grader(str(path))
    shown = [str(problem) for problem in error.value.problems]
    assert any(s.startswith(f"{path}:4:11: graders.a.type: unknown grader type 'string_chek'") and "Did you mean `string_check`" in s for s in shown)
    assert any(s.startswith(f"{path}:7:16: graders.b.operation: 'equals' is not one of eq, ne, like, ilike") for s in shown)
    assert any(s.startswith(f"{path}:9:5: graders.b.referense:") and "Did you mean `reference`" in s for s in shown)
    assert any("graders.b: string_check graders need `reference`" in s for s in shown)


@pytest.mark.parametrize("grader, path, says", [
    ({"operation": "eq"}, "", "has no `type`"),
    ({"type": "label_model"}, "type", "not supported; use score_model"),
    ({"type": "score_model", "model": "m", "input": "grade this"}, "input", "list of messages"),
    ({"type": "score_model", "model": "m", "input": [{"role": "judge", "content": "x"}]}, "input[0].role", "'judge' is not one of"),
    ({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "x"}], "range": [1, 0]}, "range", "low < high"),
    ({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "x"}], "sampling_params": {"temprature": 0}},
     "sampling_params.temprature", "Did you mean `temperature`"),
    ({"type": "python", "source": "def grade(s, i): return 1", "timeout": 0}, "timeout", "above 0"),
    ({"type": "multi", "graders": [], "calculate_output": "a"}, "graders", "section of named graders"),
])
def test_bad_grader_objects(grader, path, says):
    with pytest.raises(UserError, match=says) as error:
        parse_grader(grader)
    assert error.value.problems[0].path == path


def test_a_json_grader_file_is_read_as_it_is(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"type": "string_check", "name": "exact", "operation": "eq", "input": OUT, "reference": "{{ item.answer }}"}, indent=2))
    grader = load_grader(str(path))
    assert grader.name == "exact" and grade(grader, {"output_text": "4"}, {"answer": "4"}).score == 1.0


def test_fields_read():
    source = "def grade(sample, item):\n    return float(item['answer'] == item.get('alias'))\n"
    grader = parse_grader({**MULTI, "graders": {**MULTI["graders"], "code": {"type": "python", "source": source}},
                           "calculate_output": "named + close + code"})
    assert fields_read(grader) == {"city", "answer", "alias"}
    model = parse_grader({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "{{ item.meta.q }} {{ item.refs.0 }} " + OUT}]})
    assert fields_read(model) == {"meta.q", "refs.0"}


# --- score_model ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPLIES = {  # the grader model's reply, by the model name a test asks for
    "structured": '{"steps": [{"description": "compared", "conclusion": "close"}], "result": 0.75}',
    "fenced": 'Here is my grade:\n```json\n{"result": 4}\n```',
    "outside": '{"result": 7}',
    "prose": "The answer looks good to me.",
    "text-result": '{"result": "high"}',
}


@pytest.fixture(scope="module")
def judge():
    """A real OpenAI-compatible HTTP server (FastAPI on uvicorn, in a thread) answering each model name with REPLIES."""
    import uvicorn
    from fastapi import FastAPI, Request

    app, requests = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        requests.append(body)
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": REPLIES[body["model"]]}}]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", requests
    server.should_exit = True
    thread.join(timeout=10)


def score_model(base_url: str, model: str, **keys):
    return parse_grader({"type": "score_model", "model": model, "base_url": base_url, "timeout": 10, **keys,
                         "input": [{"role": "system", "content": "Grade the answer against {{ item.answer }}."},
                                   {"role": "user", "content": OUT}]})


def test_score_model_reads_the_result_of_a_structured_reply(judge):
    base_url, requests = judge
    grader = score_model(base_url, "structured", sampling_params={"temperature": 0, "seed": 3, "max_completions_tokens": 50})
    result = grade(grader, {"output_text": "Paris"}, {"answer": "Paris"})
    assert (result.score, result.error) == (0.75, None)
    sent = requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "Grade the answer against Paris."}, {"role": "user", "content": "Paris"}]
    assert (sent["temperature"], sent["seed"], sent["max_completion_tokens"]) == (0, 3, 50)
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["steps", "result"]


def test_score_model_reads_a_fenced_result_within_its_range(judge):
    result = grade(score_model(judge[0], "fenced", range=[0, 5]), {"output_text": "x"}, {"answer": "y"})
    assert (result.score, result.error) == (4.0, None)


@pytest.mark.parametrize("model, says", [
    ("outside", "score 7 is outside the grader's range [0, 1]"),
    ("prose", "no JSON object"),
    ("text-result", 'no numeric "result"'),
])
def test_score_model_replies_without_a_score_fail_the_line(judge, model, says):
    result = grade(score_model(judge[0], model), {"output_text": "x"}, {"answer": "y"})
    assert result.score == 0.0 and says in result.error


def test_score_model_endpoint_down_fails_the_line():
    grader = parse_grader({"type": "score_model", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout": 2,
                           "input": [{"role": "user", "content": OUT}]})
    result = grade(grader, {"output_text": "x"}, {})
    assert result.score == 0.0 and "answered an error" in result.error


def test_score_model_without_a_key_for_openai_is_refused(monkeypatch, cli, tmp_path):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "g.yaml").write_text("type: score_model\nmodel: gpt-4o-mini\ninput:\n  - {role: user, content: '{{ sample.output_text }}'}\n")
    (tmp_path / "a.jsonl").write_text('{"item": {}, "sample": {"output_text": "x"}}\n')
    result = cli("grade", "--grader", str(tmp_path / "g.yaml"), "--input", str(tmp_path / "a.jsonl"))
    assert result.returncode == 2 and "set OPENAI_API_KEY, or give `base_url`" in result.stderr


@pytest.mark.integration
def test_score_model_against_trainer_serve(trained_run, tmp_path, monkeypatch):
    """The tiny trained model as the grader model behind `trainer serve`: its reply is garbage but real, so the line is
    either scored in range or fails with the documented reason; never an exception."""
    from test_serve import KEY, start_server, stop_server

    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    process, port = start_server("--run", str(trained_run), "--engine", "transformers", "--api-key-file", str(key_file))
    try:
        monkeypatch.setenv("GRADER_TEST_KEY", KEY)
        grader = score_model(f"http://127.0.0.1:{port}/v1", "run", api_key_env="GRADER_TEST_KEY", timeout=120,
                             sampling_params={"max_completions_tokens": 16})
        result = grade(grader, {"output_text": "Paris"}, {"answer": "Paris"})
    finally:
        stop_server(process)
    if result.error is None:
        assert 0.0 <= result.score <= 1.0
    else:
        assert result.score == 0.0 and "grader model's reply" in result.error


# --- trainer grade ----------------------------------------------------------------------------------------------

@pytest.fixture
def grade_files(tmp_path):
    import yaml

    (tmp_path / "g.yaml").write_text(yaml.safe_dump(MULTI, sort_keys=False))
    (tmp_path / "answers.jsonl").write_text(
        json.dumps({"item": {"city": "Paris", "answer": "the cat sat"}, "sample": {"output_text": "the cat sat in Paris"}}) + "\n"
        + json.dumps({"item": {"city": "Rome", "answer": "Rome"}, "sample": {"output_text": "Milan"}}) + "\n"
        + "\n"
        + json.dumps({"item": {"city": "Oslo"}, "sample": {"output_text": "Oslo"}}) + "\n")
    (tmp_path / "broken.jsonl").write_text(
        json.dumps({"item": {}, "sample": {"output_text": "x"}}) + "\n" + "{not json\n" + json.dumps({"item": {}, "answer": "x"}) + "\n")
    return tmp_path


def test_trainer_grade_prints_scores_parts_and_mean(cli, grade_files):
    result = cli("grade", "--grader", str(grade_files / "g.yaml"), "--input", str(grade_files / "answers.jsonl"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{grade_files / 'answers.jsonl'}:1: 0.8125  (named=1, close=0.75)"
    assert lines[1] == f"{grade_files / 'answers.jsonl'}:2: 0  (named=0, close=0)"
    assert lines[2].startswith(f"{grade_files / 'answers.jsonl'}:4: 0  (named=1, close=failed)")
    assert "item.answer" in lines[3]
    assert lines[-1] == "mean 0.2708 over 3 lines; 1 could not be graded (scored 0, reasons above)"


def test_trainer_grade_json(cli, grade_files):
    result = cli("grade", "--grader", str(grade_files / "g.yaml"), "--input", str(grade_files / "answers.jsonl"), "--json")
    report = json.loads(result.stdout)
    assert [line["line"] for line in report["lines"]] == [1, 2, 4]
    assert report["lines"][0]["parts"]["close"] == {"score": pytest.approx(0.75), "error": None}
    assert report["mean"] == pytest.approx(0.8125 / 3) and (report["graded"], report["failed"]) == (3, 1)
    assert math.isclose(report["lines"][0]["score"], 0.8125)


def test_trainer_grade_names_each_broken_input_line(cli, grade_files):
    result = cli("grade", "--grader", str(grade_files / "g.yaml"), "--input", str(grade_files / "broken.jsonl"))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{grade_files / 'broken.jsonl'}:2: not valid JSON" in result.stderr
    assert f"{grade_files / 'broken.jsonl'}:3: unknown key answer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_trainer_grade_as_a_real_process(grade_files):
    good = run_trainer("grade", "--grader", str(grade_files / "g.yaml"), "--input", str(grade_files / "answers.jsonl"), "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["lines"][0]["score"] == pytest.approx(0.8125)
    broken = run_trainer("grade", "--grader", str(grade_files / "g.yaml"), "--input", str(grade_files / "broken.jsonl"))
    assert broken.returncode == 2 and f"{grade_files / 'broken.jsonl'}:2: not valid JSON" in broken.stderr
    assert "Traceback" not in broken.stderr
    (grade_files / "bad.yaml").write_text("type: string_check\noperation: equal\ninput: '{{ sample.output_text }}'\nreference: x\n")
    bad = run_trainer("grade", "--grader", str(grade_files / "bad.yaml"), "--input", str(grade_files / "answers.jsonl"))
    assert bad.returncode == 2 and f"{grade_files / 'bad.yaml'}:2:12: operation: 'equal' is not one of eq, ne, like, ilike" in bad.stderr


def _doc_graders() -> list[str]:
    import re

    from conftest import REPO

    text = (REPO / "docs" / "graders.md").read_text()
    return [block for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if block.startswith("type:")]


@pytest.mark.parametrize("block", _doc_graders())
def test_the_graders_in_the_guide_are_valid(block, tmp_path):
    (tmp_path / "g.yaml").write_text(block)
    load_grader(str(tmp_path / "g.yaml"))


def test_the_guide_shows_every_grader_type():
    import yaml

    assert {yaml.safe_load(block)["type"] for block in _doc_graders()} == {"string_check", "text_similarity", "score_model", "python", "multi", "builtin"}
