"""The "Use your model elsewhere" blocks of docs/export-and-serve.md, run as a user would paste them, where the tool exists here
(transformers + peft, llama-cpp-python, the openai client against `trainer serve`); paths point at a real run."""
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_trainer
from test_serve import start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SECTION = REPO.joinpath("docs", "export-and-serve.md").read_text().split("## Use your model elsewhere", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.DOTALL)


def block(needle: str) -> str:
    found = [b for b in BLOCKS if needle in b]
    assert len(found) == 1, f"the README should have one python block with {needle!r}"
    return found[0]


def run_block(code: str, demo_run) -> str:
    code = code.replace("runs/quickstart/export/quickstart-", f"{demo_run}/export/{demo_run.name}-").replace("runs/quickstart", str(demo_run))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_transformers_and_peft_block(demo_run):
    from trainer.demo import demo_model_path

    model = demo_model_path()
    # the README names the base by its Hub id (unreachable here): the line marked "the run's model.name_or_path"
    # loads the same model from the demo GGUF instead
    code = re.sub(r'from_pretrained\("[^"]+"\)(?=  # the run\'s model.name_or_path)',
                  f'from_pretrained({str(model.parent)!r}, gguf_file={model.name!r})', block("PeftModel"))
    assert "gguf_file=" in code
    assert "tea" in run_block(code, demo_run).lower()


@pytest.mark.llamacpp
def test_llama_cpp_block(demo_run):
    result = run_trainer("export", "--run", str(demo_run), "--to", "gguf", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tea" in run_block(block("from llama_cpp import Llama"), demo_run).lower()


def test_openai_client_block(demo_run):
    process, port = start_server("--run", str(demo_run), "--engine", "transformers")
    try:
        code = block("from openai import OpenAI").replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(
            'model="quickstart"', f'model="{demo_run.name}"')
        assert "tea" in run_block(code, demo_run).lower()
    finally:
        stop_server(process)
