"""`trainer export --to gguf|ollama` on the real SmolLM2 run: the GGUF loads in llama.cpp (llama-cpp-python built
from the same source by `trainer backends setup llama.cpp`) and in transformers' GGUF loader, and answers as the
run does; the Modelfile's Go template (rendered by Go's own text/template) lays out prompts as the Jinja template."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_trainer, validation_prompts
from trainer.evaluation.metrics import json_list_f1

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.llamacpp]
PROMPTS = 20


@pytest.fixture(scope="module")
def run_answers(demo_run):
    """`trainer generate`'s greedy answers on the validation prompts: what every export must reproduce."""
    conversations, references = validation_prompts(PROMPTS)
    prompts = demo_run.parent / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    result = run_trainer("generate", "--run", str(demo_run), "--input", str(prompts), "--max-new-tokens", "96", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line)["answer"] for line in result.stdout.splitlines()], references


def llama_cpp_answers(gguf, conversations, tokenizer_dir):
    """Greedy answers by llama.cpp itself, on prompts rendered with the run's chat template."""
    from llama_cpp import Llama

    from trainer.generate import render_prompt
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    llm = Llama(model_path=str(gguf), n_ctx=1024, verbose=False, seed=0)
    answers = []
    for messages in conversations:
        tokens = llm.tokenize(render_prompt(tokenizer, messages).encode(), add_bos=False, special=True)
        out = llm.create_completion(tokens, max_tokens=96, temperature=0.0)
        answers.append(out["choices"][0]["text"].strip())
    return answers


def same_share(a, b):
    return sum(x == y for x, y in zip(a, b)) / len(a)


def export(run, quant):
    result = run_trainer("export", "--run", str(run), "--to", "gguf", "--quant", quant, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    path = result.stdout.strip().splitlines()[-1]
    assert path.endswith(f"-{quant}.gguf")
    return path


def test_f16_gguf_answers_as_the_run_in_llama_cpp_and_transformers(demo_run, run_answers):
    from gguf import GGUFReader

    answers, _ = run_answers
    gguf = export(demo_run, "f16")
    conversations, _ = validation_prompts(PROMPTS)

    # the file is standalone: the tuned weights, the run's chat template and its end-of-turn token
    reader = GGUFReader(gguf)
    fields = {name: reader.fields[name] for name in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id")}
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert "<|im_start|>" in template
    tokens = reader.fields["tokenizer.ggml.tokens"]
    eos = int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    assert bytes(tokens.parts[tokens.data[eos]]).decode() == "<|im_end|>"

    by_llama = llama_cpp_answers(gguf, conversations, demo_run / "model")
    assert same_share(by_llama, answers) >= 0.95, list(zip(by_llama, answers))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pathlib import Path

    path = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # one left-padded batch (measured: the same 20 answers as one prompt at a time, in 25 s instead of 59)
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) for messages in conversations]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=96, do_sample=False, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    by_transformers = [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]
    assert same_share(by_transformers, answers) >= 0.95, list(zip(by_transformers, answers))


def test_q8_0_gguf_scores_as_the_run(demo_run, run_answers):
    answers, references = run_answers
    gguf = export(demo_run, "q8_0")
    conversations, _ = validation_prompts(PROMPTS)
    by_llama = llama_cpp_answers(gguf, conversations, demo_run / "model")
    run_f1 = json_list_f1(answers, references)["json_list_f1"]
    gguf_f1 = json_list_f1(by_llama, references)["json_list_f1"]
    assert abs(run_f1 - gguf_f1) <= 0.02, (run_f1, gguf_f1)
    assert run_f1 > 0.3  # the shortened run has learned the task: the comparison means something


def test_k_quant_goes_through_llama_quantize(demo_run):
    gguf = export(demo_run, "q4_k_m")
    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(gguf).tensors}
    assert "Q4_K" in types, types
    answer = llama_cpp_answers(gguf, validation_prompts(1)[0], demo_run / "model")[0]
    assert answer.startswith("["), answer


def test_ollama_modelfile_renders_prompts_as_the_chat_template(demo_run, go_render):
    result = run_trainer("export", "--run", str(demo_run), "--to", "ollama", "--quant", "q8_0", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    modelfile = (demo_run / "export" / "Modelfile").read_text()
    assert f"FROM ./{demo_run.name}-q8_0.gguf" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    # every training conversation has the same system prompt, so Ollama adds it
    assert 'SYSTEM """You are a helpful recipe assistant.' in modelfile
    assert "ollama create recipes -f Modelfile" in result.stderr

    from trainer.generate import render_prompt
    from trainer.models import load_tokenizer

    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    tokenizer = load_tokenizer(str(demo_run / "model"))
    conversation = [{"role": "system", "content": "You list ingredients."}, {"role": "user", "content": "Title: Tea\n\nIngredients: [\"tea\"]"},
                    {"role": "assistant", "content": "[\"tea\"]"}, {"role": "user", "content": "And {{ coffee }}?"},
                    {"role": "assistant", "content": "[\"coffee\"]"}, {"role": "user", "content": "Thanks"}]
    for messages in (conversation, conversation[1:], conversation[:2]):
        assert go_render(template, messages) == render_prompt(tokenizer, messages)


def test_ollama_export_from_another_folder_keeps_the_system_prompt(demo_run, tmp_path):
    """The run's config names its data relatively (data/recipes/train.jsonl, trained from the repository root), so
    from another folder the data is not there: the SYSTEM line was silently dropped. The run records it now."""
    assert yaml.safe_load((demo_run / "config.yaml").read_text())["data"]["train"] == "data/recipes/train.jsonl"
    result = run_trainer("export", "--run", str(demo_run), "--to", "ollama", "--quant", "q8_0", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'SYSTEM """You are a helpful recipe assistant.' in (demo_run / "export" / "Modelfile").read_text()
    assert "warning:" not in result.stderr, result.stderr  # neither the data nor anything else is missed


def test_export_neither_imports_deepspeed_nor_prints_its_warning(demo_run, tmp_path):
    """As a training run (tests/test_training.py): DeepSpeed is installed with the dev extra, and no export has a use
    for it, nor for its "Setting accelerator to CPU" line; the model export saves the merged model with
    save_pretrained, whose look for a DeepSpeed engine imported it in training runs. Both targets that load models."""
    code = ("import runpy, sys; sys.argv = ['trainer'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('trainer', run_name='__main__')\n"
            "finally:\n    print('deepspeed imported:', 'deepspeed' in sys.modules, file=sys.stderr)")
    for args in (["--run", str(demo_run), "--to", "ollama"], ["--to", "autotrain", "--config", "configs/quickstart.yaml", "--dir", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-c", code, "export", *args], cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
        assert "Setting accelerator" not in output and "real_accelerator" not in output, output
        assert "deepspeed imported: False" in result.stderr and "deepspeed" not in output.replace("deepspeed imported", ""), output


def test_export_problems_are_messages(tmp_path, demo_run):
    result = run_trainer("export", "--run", str(tmp_path), "--to", "gguf")
    assert result.returncode == 2 and "is not a finished run directory" in result.stderr and "Traceback" not in result.stderr
    result = run_trainer("export", "--run", str(demo_run), "--to", "gguf", "--quant", "q3")
    assert result.returncode == 2 and "--quant q3: not a type trainer can write" in result.stderr
    result = run_trainer("export", "--to", "gguf")
    assert result.returncode == 2 and "needs --run DIR" in result.stderr
