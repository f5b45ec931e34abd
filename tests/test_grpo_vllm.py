"""grpo's answers sampled by vLLM (trainer/reinforcement/vllm_sampling.py): only on an NVIDIA GPU with vLLM installed,
so CI (no GPU) skips this file. On a GPU machine: `pip install vllm`, then
`python -m pytest tests/test_grpo_vllm.py` (about 5 minutes on one GPU, the demo run included).

The demo run's LoRA adapter was trained on SmolLM2 read from its GGUF file; vLLM puts no adapter on a GGUF model, so
the base is that model written out as a Hugging Face folder (the same weights, dequantised)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import yaml
from conftest import REPO, run_trainer, validation_prompts

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                                 reason="vLLM samples on NVIDIA GPUs, with vLLM installed")]


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.demo import demo_model_path

    gguf = demo_model_path()
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def grpo_yaml(tmp_path, base, adapter, **grpo):
    config = yaml.safe_load((REPO / "configs" / "recipes-grpo.yaml").read_text())
    config["model"] = {"name_or_path": str(base), "adapter": str(adapter)}
    config["training"]["grpo"] |= {"generation": "vllm", "vllm_gpu_memory": 0.25, **grpo}
    config["training"] |= {"max_steps": 2, "save_every": None}
    config["output"] = {"dir": str(tmp_path / "run")}
    config.pop("evaluation", None)
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_vllm_samples_with_the_adapter_training_has(demo_run, smollm2_folder, tmp_path):
    """Near-greedy (temperature 0.01, the lowest vLLM samples at), vLLM's answers with the adapter equal transformers' generate's on the same peft
    model, up to near-ties, and differ from the base's: the adapter file reached vLLM, and the rows are built alike."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.config import load_config
    from trainer.data.pipeline import checked_template
    from trainer.data.prompts import Prompt, encode_prompts
    from trainer.data.tokenize import Tokenizer
    from trainer.models import load_tokenizer
    from trainer.reinforcement.sampling import sample_answers
    from trainer.reinforcement.vllm_sampling import VllmSampler

    config = load_config(str(grpo_yaml(tmp_path, smollm2_folder, demo_run / "model", temperature=0.01, num_generations=2)))
    tokenizer = load_tokenizer(str(smollm2_folder))
    encode = Tokenizer(tokenizer, checked_template(config, tokenizer), "assistant", 1024)  # as grpo's setup encodes its prompts
    conversations, _ = validation_prompts(8)
    prompts, _ = encode_prompts([Prompt(tuple(c), {}, "validation.jsonl", k + 1) for k, c in enumerate(conversations)], encode, 1024)
    base = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.bfloat16).cuda()
    model = PeftModel.from_pretrained(base, demo_run / "model", is_trainable=True).eval()
    sampler = VllmSampler(config, model, tmp_path / "run")
    told: dict[int, str] = {}
    by_vllm = sampler.sample(model, tokenizer, prompts, config.training.grpo, "cuda", on_answer=told.__setitem__)
    with torch.no_grad():
        by_torch = sample_answers(model, tokenizer, prompts, config.training.grpo, "cuda")
        with model.disable_adapter():
            by_base = sample_answers(model, tokenizer, prompts, config.training.grpo, "cuda")
    sampler.close()
    assert told == dict(enumerate(by_vllm.texts)) and len(by_vllm.texts) == 16
    assert by_vllm.input_ids.shape[0] == 16 and bool((by_vllm.completion_mask.sum(1) > 0).all())
    same = sum(a == b for a, b in zip(by_vllm.texts, by_torch.texts))
    assert same >= 12, list(zip(by_vllm.texts, by_torch.texts))  # bf16 in two engines: a near-tie may fall the other way
    assert sum(a.startswith("[") for a in by_vllm.texts) >= 14 and sum(a != b for a, b in zip(by_vllm.texts, by_base.texts)) >= 12
    assert not (tmp_path / "run" / ".vllm-adapters").exists()


def test_a_grpo_run_samples_with_vllm_and_learns(demo_run, smollm2_folder, tmp_path):
    config = grpo_yaml(tmp_path, smollm2_folder, demo_run / "model")
    result = run_trainer("--config", str(config), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Answers sampled by vLLM on the GPU" in result.stderr and "so the reward can teach" in result.stderr
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["reward"] <= 1 and r["completion_length"] > 0 for r in rows)
    assert (run / "model" / "adapter_config.json").is_file() and not (run / ".vllm-adapters").exists()
