"""`trainer data` on the quickstart with the real SmolLM2 tokenizer, and the report's arithmetic."""
import json

import pytest

from conftest import run_trainer
from trainer.data.report import TokenStats


def test_token_stats_literal():
    stats = TokenStats.of([1, 2, 3, 4, 10])
    assert (stats.minimum, stats.mean, stats.p50, stats.maximum, stats.total) == (1, 4.0, 3, 10, 20)
    assert stats.p90 == pytest.approx(7.6)  # between the 4th (4) and 5th (10) values, 60% of the way


@pytest.mark.integration
@pytest.mark.slow
def test_quickstart_data_report():
    result = run_trainer("data", "--config", "configs/quickstart.yaml", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    train, validation = report["splits"]
    assert train["detection"] == "detected messages format: messages in 100 of the first 100 rows"
    assert (train["records"], train["kept"], validation["kept"]) == (101, 101, 100)
    assert report["tokens"]["total"] == 14069 and report["trained"]["total"] == 2923
    assert report["truncated"] == 0 and report["duplicates"] == 0 and report["overlap"] == 0
    assert report["steps_per_epoch"] == 13
    assert report["padding_unpacked"] < 0.06 and report["padding_packed"] < 0.06

    text = run_trainer("data", "--config", "configs/quickstart.yaml")
    assert "Total tokens: 14069; trained tokens: 2923 (20.8% of all)" in text.stdout
