"""Any data file at all: a report with line numbers or a UserError, never a traceback; with on_invalid: skip the
kept and the skipped records add up to the records in the file."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_char_tokenizer, run_trainer
from trainer.config import parse_config
from trainer.data.pipeline import prepare_data
from trainer.data.templates import CHATML
from trainer.errors import UserError

TOKENIZER = make_char_tokenizer(CHATML)
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def _messages(roles, contents):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in zip(roles, contents)]}, ensure_ascii=False).encode()


line = st.one_of(
    st.builds(lambda q, a: _messages(["user", "assistant"], [q, a]), text, text),  # valid (unless empty)
    st.builds(lambda q, a: json.dumps({"prompt": q, "completion": a}).encode(), text, text),  # another format
    st.builds(lambda t: json.dumps({"text": t}).encode(), text),  # a third
    st.builds(lambda q, a, cut: _messages(["user", "assistant"], [q, a])[:cut], text, text, st.integers(1, 30)),  # truncated
    st.just(b'{"messages": []}'),  # an empty conversation
    st.builds(lambda r, c: _messages([r, "assistant"], [c, "x"]), st.sampled_from(["robot", "", "USER", "tool", "system"]), text),
    st.builds(lambda c: _messages(["assistant", "user"], ["x", c]), text),  # ends with the user
    st.sampled_from([b"[1, 2]", b'"just a string"', b"3", b"null", b'{"messages": NaN}', b'{"messages": [{"role": "user", "content": null}]}',
                     b'{"messages": "not a list"}', b"\xff\xfe\xfa broken utf-8", b'{"messages": [{"role": "user", "content": "\xc3"}]}',
                     b'{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}']),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(line, min_size=1, max_size=25), crlf=st.booleans(), bom=st.booleans(), blank=st.booleans())
def test_fuzzed_jsonl_is_reported_never_crashes(tmp_path, lines, crlf, bom, blank):
    body = (b"\r\n" if crlf else b"\n").join(lines) + (b"\n\n" if blank else b"")
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    config = parse_config(f"model: {{name_or_path: x}}\ndata: {{train: {path}, validation_split: 0, on_invalid: skip, "
                          "max_seq_length: 256}\ntraining: {epochs: 1}\n", check_files=False)
    try:
        data = prepare_data(config, TOKENIZER, stop_on_problems=False)
    except UserError as exc:  # nothing usable, or the format cannot be told: said in words
        assert exc.problems and all(str(p) for p in exc.problems)
        return
    report = data.splits[0]
    assert report.records == len(lines)  # every line of the file is accounted for, blank lines aside
    bad = {p.line for p in report.problems}
    assert report.kept + len(bad) == report.records
    assert len(data.train) == report.kept
    assert all(p.line is not None and 1 <= p.line <= len(lines) for p in report.problems)


CSV_CASES = {
    "nan and empty cells": "prompt,completion\nhello,world\nNaN,x\n,empty prompt\nok,\nfine,answer\n",
    "quoted newlines": 'prompt,completion\n"two\nlines",yes\nthree,"a ""quoted"" answer"\n',
    "ragged rows": "prompt,completion\na,b,c,d\ne\nf,g\n",
    "only a header": "prompt,completion\n",
}


@pytest.mark.parametrize("name", list(CSV_CASES))
def test_awkward_csv_is_reported(tmp_path, name):
    path = tmp_path / "data.csv"
    path.write_text(CSV_CASES[name])
    config = parse_config(f"model: {{name_or_path: x}}\ndata: {{train: {path}, validation_split: 0, on_invalid: skip}}\n"
                          "training: {epochs: 1}\n", check_files=False)
    try:
        data = prepare_data(config, TOKENIZER, stop_on_problems=False)
    except UserError as exc:
        assert exc.problems
        return
    report = data.splits[0]
    assert report.kept + len({p.line for p in report.problems}) == report.records


@pytest.mark.integration
@pytest.mark.slow
def test_a_10_mb_single_line_is_reported_with_its_line(tmp_path, tiny_model_dir):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * 10_000_000}, {"role": "assistant", "content": "y"}]})
    path.write_text("\n".join([good, huge[:-5], good]) + "\n")  # the huge line is also cut short
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name_or_path: {tiny_model_dir}}}\ndata: {{train: {path}, validation_split: 0}}\ntraining: {{epochs: 1}}\n")
    result = run_trainer("data", "--config", str(cfg), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}:2" in result.stderr + result.stdout
