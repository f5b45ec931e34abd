"""The OpenAI cookbook's data checks, from literal examples to exact counts, and in `trainer data`."""
import json
from dataclasses import astuple

import pytest
from conftest import tiny_config

from trainer.data.checks import Distribution, cookbook_checks
from trainer.data.formats import Example, Message
from trainer.data.tokenize import IGNORE, Tokenized


def example(*roles):
    return Example(tuple(Message(r, "x", r == "assistant") for r in roles), None, "f", 1)


def tokens(length, trained, full_length=None):
    labels = (1,) * trained + (IGNORE,) * (length - trained)
    return Tokenized((1,) * length, labels, "f", 1, full_length or length, 0)


def test_missing_roles_distributions_and_long_examples():
    examples = [example("system", "user", "assistant"), example("user", "assistant"), example("system", "user"),
                example("system", "assistant", "user", "assistant")]
    tokenized = [tokens(10, 2), tokens(20, 4), tokens(30, 0), tokens(40, 8, full_length=90)]
    checks = cookbook_checks(examples, tokenized, max_length=40, train_on="assistant")
    assert (checks.missing_system, checks.missing_user, checks.missing_assistant) == (1, 0, 1)
    assert checks.messages == Distribution(2, 2, 2.5, 3.7, 4)
    assert astuple(checks.tokens) == pytest.approx((10, 13, 25, 72, 90))  # before truncation
    assert astuple(checks.assistant_tokens) == pytest.approx((0, 0.6, 3, 6.8, 8))
    assert checks.over_max_length == 1
    assert cookbook_checks(examples, tokenized, 40, "all").assistant_tokens is None


def test_data_report_carries_the_checks(tmp_path, tiny_model_dir, cli):
    config = tiny_config(tmp_path, tiny_model_dir)
    result = cli("data", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    checks = json.loads(result.stdout)["checks"]
    assert checks["examples"] == 12 and checks["missing_system"] == 12 and checks["missing_user"] == 0
    assert checks["messages"]["median"] == 2
    text = cli("data", "--config", str(config)).stdout
    assert "OpenAI cookbook checks on 12 training example(s): missing a system message 12" in text
