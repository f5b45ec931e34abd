"""Using a result: trainer generate (one prompt, a file of prompts) and trainer chat, on a tiny trained run."""
import json
import subprocess
import sys

import pytest

from conftest import REPO  # trained_run: a fixture of conftest.py, the tiny model trained for 30 steps


def test_generate_one_prompt(trained_run, cli):
    result = cli("generate", "--run", str(trained_run), "--prompt", "say red", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 0


def test_generate_a_file_of_prompts_in_batches(trained_run, tmp_path, cli):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "say red"}) + "\n" +
                       json.dumps({"messages": [{"role": "user", "content": "say blue"}, {"role": "assistant", "content": "x"}]}) + "\n")
    result = cli("generate", "--run", str(trained_run), "--input", str(prompts), "--max-new-tokens", "6", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(r["prompt_tokens"] > 0 and 1 <= r["generated_tokens"] <= 6 for r in rows)


def test_generation_is_greedy_and_batch_independent(trained_run):
    from trainer.generate import generate, load_run

    loaded = load_run(trained_run)
    conversations = [[{"role": "user", "content": f"say {w}"}] for w in ("red", "a much longer prompt about blue")]
    together = generate(loaded, conversations, max_new_tokens=6, batch_size=2)
    alone = [generate(loaded, [c], max_new_tokens=6)[0] for c in conversations]
    assert [a.text for a in together] == [a.text for a in alone]  # left padding changes nothing


@pytest.mark.integration
def test_chat_streams_answers(trained_run):
    proc = subprocess.run([sys.executable, "-m", "trainer", "chat", "--run", str(trained_run), "--max-new-tokens", "6"],
                          input="say red\n/reset\nsay blue\n\n", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2


def test_not_a_run_directory(tmp_path, cli):
    result = cli("generate", "--run", str(tmp_path), "--prompt", "hi")
    assert result.returncode == 2 and "is not a finished run directory" in result.stderr
