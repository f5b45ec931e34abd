"""Every broken data file in tests/broken_data gets its expected message with its line number, and exit code 2."""
import re
import textwrap

import pytest

from conftest import REPO, read_expectations, make_char_tokenizer
from trainer.cli import main

CORPUS = REPO / "tests" / "broken_data"


EXPECTED = read_expectations(CORPUS / "expected.txt")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A folder holding only a tiny chatml tokenizer: a fast stand-in for a model in `trainer data`."""
    from trainer.data.templates import CHATML

    path = tmp_path_factory.mktemp("tok")
    make_char_tokenizer(CHATML).save_pretrained(path)
    return path


def write_config(tmp_path, tokenizer_dir, train: str, extra: str = "") -> str:
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""\
        model:
          name_or_path: {tokenizer_dir}
        data:
          train: {train}
          validation_split: 0
        training:
          epochs: 1
        """) + extra)
    return str(config)


def test_corpus_is_complete():
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.txt"}
    assert files == set(EXPECTED)
    assert len(files) >= 25


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_data_is_explained(name, tmp_path, tokenizer_dir, capsys):
    config = write_config(tmp_path, tokenizer_dir, str(CORPUS / name))
    assert main(["data", "--config", config]) == 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    for pattern in EXPECTED[name]:
        assert re.search(pattern, output), f"{pattern!r} not in:\n{output}"


def test_skip_drops_only_the_broken_records_and_says_which(tmp_path, tokenizer_dir, capsys):
    config = write_config(tmp_path, tokenizer_dir, str(CORPUS / "many_problems.jsonl"), "  # placeholder\n")
    config_text = open(config).read().replace("  validation_split: 0\n", "  validation_split: 0\n  on_invalid: skip\n")
    open(config, "w").write(config_text)
    assert main(["data", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "31 records, 1 usable, 30 problem(s)" in out
    assert "skipped (on_invalid: skip): 30 record(s), lines 2-31" in out


def test_training_stops_before_loading_a_model_when_data_is_broken(tmp_path, tokenizer_dir, cli):
    config = write_config(tmp_path, tokenizer_dir, str(CORPUS / "unknown_role.jsonl"))
    result = cli("data", "--config", config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "unknown_role.jsonl:2: message 2 has unknown role 'human'" in result.stdout
