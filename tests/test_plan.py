"""`trainer plan`: parameter counts equal the built model's, the parts of the estimate, and the CLI."""
import json

import pytest
from conftest import run_trainer, tiny_config

from trainer.config import load_config
from trainer.plan import count_parameters
from trainer.plan.params import architecture, read_model_config


@pytest.mark.parametrize("method,targets", [("lora", "all-linear"), ("dora", "all-linear"), ("lora", ["q_proj", "v_proj"]),
                                            ("full", "all-linear")])
def test_parameter_counts_equal_the_built_models(tmp_path, tiny_model_dir, method, targets):
    from trainer.models import add_adapter, load_model

    config = load_config(str(tiny_config(tmp_path, tiny_model_dir, method=method, lora={"r": 4, "target_modules": targets})))
    planned = count_parameters(architecture(read_model_config(config.model)), config)
    model = add_adapter(load_model(config, "cpu"), config)
    assert planned.total == sum(p.numel() for p in model.parameters())
    assert planned.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_a_target_the_model_lacks_is_named(tmp_path, tiny_model_dir):
    from trainer.errors import UserError

    config = load_config(str(tiny_config(tmp_path, tiny_model_dir, lora={"target_modules": ["query_key_value"]})))
    with pytest.raises(UserError, match=r"target_modules: none of \['query_key_value'\].*'q_proj'"):
        count_parameters(architecture(read_model_config(config.model)), config)


def test_openai_rules_literal():
    from trainer.plan.cost import openai_billed_tokens, sufficiency

    assert openai_billed_tokens([100] * 10) == (10, 10 * 1000)  # 10 examples: 100 // 10 epochs
    assert openai_billed_tokens([20000, 10] * 50) == (3, 3 * (16385 + 10) * 50)  # 3 epochs, each example capped
    assert openai_billed_tokens([5] * 20000) == (1, 100000)
    assert sufficiency(5).startswith("too few") and sufficiency(30).startswith("enough to start")


def test_time_here_from_recorded_runs_literal():
    from trainer.plan.cost import time_here

    table = {"m.gguf|lora|auto|512": 100.0, "m.gguf|lora|auto|512|overhead_seconds": 30.0,
             "m.gguf|lora|auto|512|evaluation_seconds": 90.0, "other.gguf|full|auto|512": 5.0}
    same = time_here(table, "m.gguf|lora|auto|512", 2000, base=1000, evaluation=True)
    assert (same.training_seconds, same.overhead_seconds, same.evaluation_seconds, same.total_seconds) == (20.0, 30.0, 90.0, 140.0)
    # gradient checkpointing repeats the forward pass: 6 instead of 4 x parameters per token, so 100 -> 66.7 tokens/s
    scaled = time_here(table, "m.gguf|lora|auto|512|checkpointing", 2000, base=1000, evaluation=False)
    assert scaled.training_seconds == pytest.approx(30.0) and "scaled by FLOPs per token from the throughput of a lora run" in scaled.training_from
    assert (scaled.overhead_seconds, scaled.evaluation_seconds) == (30.0, None)  # the model's loading time; no evaluation asked
    assert time_here(table, "m.gguf|lora|auto|1024", 2000, base=1000, evaluation=False) is None  # another length: not known
    assert time_here(table, "m.gguf|full|auto|512", 2000, base=1000, evaluation=False) is None  # another method: not known


@pytest.fixture
def history(tmp_path, monkeypatch):
    """An empty throughput.json of this test's own (trainer.throughput): the path it is written to."""
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "throughput.json"


def test_a_trial_run_does_not_replace_a_full_runs_throughput(history):
    """Issue 32: the quickstart's 65 steps planned 19.9 min; one 4-step run from the UI then recorded 0.66 tokens/s,
    and the plan said 376 min."""
    from trainer.plan.cost import time_here
    from trainer.throughput import KEEP, Measurement, estimates, record

    key = "m.gguf|lora|auto|512|batch 8"
    record(key, Measurement(seconds=1194.0, steps=65, tokens=32_000))
    record(f"{key}|evaluation_seconds", Measurement(seconds=90.0, steps=65, tokens=32_000))
    for _ in range(KEEP + 1):  # more trials than the history keeps: they push out each other, not the full run
        record(key, Measurement(seconds=3030.0, steps=4, tokens=2000))
        record(f"{key}|evaluation_seconds", Measurement(seconds=400.0, steps=4, tokens=2000))
    here = time_here(estimates(), key, 32_000, base=1000, evaluation=True)
    assert here is not None
    assert (here.training_seconds, here.evaluation_seconds) == (pytest.approx(1194.0), 90.0)
    assert here.training_from == "the throughput earlier runs of this model, method, length and micro-batch measured here"
    saved = json.loads(history.read_text())["measurements"][key]
    assert len(saved) == KEEP and saved[0]["steps"] == 65


def test_a_trial_run_counts_while_there_is_nothing_longer(history):
    from trainer.throughput import Measurement, estimates, record

    record("m.gguf|lora|auto|512|batch 8", Measurement(seconds=30.0, steps=4, tokens=600))
    assert estimates()["m.gguf|lora|auto|512|batch 8"] == 20.0


def test_runs_are_weighed_by_the_tokens_they_trained(history):
    """100 tokens/s over 10,000 tokens and 50 tokens/s over 40,000: together 50,000 tokens in 900 s, 55.6 tokens/s
    (the mean of the two rates, 75, would plan the larger run's work 1.5 times too fast)."""
    from trainer.throughput import Measurement, estimates, record

    key = "m.gguf|lora|auto|512|batch 8"
    record(key, Measurement(seconds=100.0, steps=40, tokens=10_000))
    record(key, Measurement(seconds=800.0, steps=160, tokens=40_000))
    assert estimates()[key] == pytest.approx(50_000 / 900)


def test_an_older_trainers_file_is_read_and_converted(history):
    """Before, throughput.json was key -> the last run's number, keyed without the micro-batch."""
    from trainer.plan.cost import time_here
    from trainer.throughput import Measurement, estimates, record

    history.parent.mkdir(parents=True)
    history.write_text(json.dumps({"m.gguf|lora|auto|512": 27.0, "m.gguf|lora|auto|512|overhead_seconds": 30.0}))
    old = time_here(estimates(), "m.gguf|lora|auto|512|batch 8", 2700, base=1000, evaluation=False)
    assert old is not None and (old.training_seconds, old.overhead_seconds) == (100.0, 30.0)
    assert "recorded by an older trainer" in old.training_from
    record("m.gguf|lora|auto|512|batch 8", Measurement(seconds=50.0, steps=30, tokens=2700))
    saved = json.loads(history.read_text())
    assert saved["version"] == 2 and saved["earlier"] == {"m.gguf|lora|auto|512": 27.0, "m.gguf|lora|auto|512|overhead_seconds": 30.0}
    new = time_here(estimates(), "m.gguf|lora|auto|512|batch 8", 2700, base=1000, evaluation=False)
    assert new is not None and (new.training_seconds, new.overhead_seconds) == (50.0, 30.0)


def test_time_here_from_another_micro_batch(history):
    from trainer.plan.cost import time_here

    table = {"m.gguf|lora|auto|512|batch 2": 40.0, "m.gguf|lora|auto|512|batch 16": 80.0, "m.gguf|lora|auto|512": 10.0,
             "m.gguf|lora|auto|512|batch 16|evaluation_seconds": 90.0}
    here = time_here(table, "m.gguf|lora|auto|512|batch 8", 800, base=1000, evaluation=True)
    assert here is not None and (here.training_seconds, here.evaluation_seconds) == (10.0, 90.0)  # the nearest: 16 (x2, 2 is x4)
    assert here.training_from == "the throughput of a lora run of this model here at micro-batch 16"


def test_the_key_keeps_the_micro_batch(tmp_path, tiny_model_dir):
    from trainer.throughput import key_parts, throughput_key

    config = load_config(str(tiny_config(tmp_path, tiny_model_dir, batch_size=2, gradient_checkpointing=True)))
    key = throughput_key(config)
    assert key.endswith("|64|batch 2|checkpointing")
    assert key_parts(key)[2:] == ("auto", "64", 2, True)


def test_memory_parts_follow_the_method(tmp_path, tiny_model_dir):
    from trainer.plan.memory import Precision, Shape, estimate_memory

    def parts(method, optimizer="adamw", checkpointing=False):
        config = load_config(str(tiny_config(tmp_path, tiny_model_dir, method=method, optimizer=optimizer,
                                             gradient_checkpointing=checkpointing)))
        arch = architecture(read_model_config(config.model))
        count = count_parameters(arch, config)
        return arch, count, estimate_memory(arch, count, config, "cuda", Precision("bfloat16", "bfloat16"), Shape(4, 64, 10)).parts

    arch, count, full = parts("full")
    assert full["weights"] == arch.total * 2 and full["gradients"] == arch.total * 2 and full["optimizer"] == arch.total * 4
    arch, count, lora = parts("lora")
    assert lora["adapters"] == count.trainable * 4 and lora["optimizer"] == count.trainable * 8
    assert parts("lora", optimizer="sgd")[2]["optimizer"] == count.trainable * 4
    assert parts("lora", checkpointing=True)[2]["activations"] < lora["activations"]  # 2 layers: one kept whole either way
    assert lora["logits"] == 4 * 10 * arch.vocab_size * (2 + 8)
    arch, _, qlora = parts("qlora")
    assert qlora["weights"] < lora["weights"] * 0.5 + arch.embedding_params * 2


def test_allocator_part_only_where_glibc_keeps_freed_blocks(tmp_path, tiny_model_dir):
    """On a CPU under glibc's default malloc the plan adds the freed blocks its heap keeps; a low MALLOC_MMAP_THRESHOLD_
    (blocks returned when freed), another device or no glibc adds nothing."""
    import platform
    import sys

    from trainer.plan.memory import Precision, Shape, estimate_memory, glibc_keeps_freed_blocks

    config = load_config(str(tiny_config(tmp_path, tiny_model_dir)))
    arch = architecture(read_model_config(config.model))
    count = count_parameters(arch, config)
    fp32 = Precision("float32", "float32")
    cpu = estimate_memory(arch, count, config, "cpu", fp32, Shape(4, 64, 10), heap_keeps_freed=True)
    assert cpu.parts["allocator"] == pytest.approx(0.6 * (cpu.parts["activations"] + cpu.parts["logits"]))
    assert cpu.peak == pytest.approx(sum(cpu.parts.values()))
    assert "allocator" not in estimate_memory(arch, count, config, "cpu", fp32, Shape(4, 64, 10)).parts
    assert "allocator" not in estimate_memory(arch, count, config, "cuda", fp32, Shape(4, 64, 10), heap_keeps_freed=True).parts
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert glibc_keeps_freed_blocks({}) is glibc
    assert glibc_keeps_freed_blocks({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    assert glibc_keeps_freed_blocks({"MALLOC_MMAP_THRESHOLD_": str(64 * 1024**2)}) is glibc


def test_plan_command_json(tmp_path, tiny_model_dir, cli):
    config = tiny_config(tmp_path, tiny_model_dir)
    result = cli("plan", "--config", str(config), "--json", "--requests", "1000000", "--price-per-million", "0.2")
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    assert plan["parameters"]["trainable"] > 0 and plan["memory"]["peak_bytes"] > 0
    assert [r["gpu"] for r in plan["gpus"]["rows"]][:2] == ["T4", "L4"] and all(r["fits"] for r in plan["gpus"]["rows"])
    assert plan["data"]["examples"] == 12 and plan["data"]["openai_default_epochs"] == 8
    prompts = plan["hosting"]["prompt_tokens"]
    assert prompts["few_shot"] > prompts["tuned"] and prompts["retrieval"] > prompts["tuned"]
    saved = plan["hosting"]["saved_per_month"]["few_shot"]
    assert saved == pytest.approx((prompts["few_shot"] - prompts["tuned"]) * 1000000 / 1e6 * 0.2)
    # 1 step of a 3-step epoch (12 examples, batch 4) reads as a share of an epoch, not "0.333333 epoch(s)"
    text = cli("plan", "--config", str(tiny_config(tmp_path, tiny_model_dir, max_steps=1))).stdout
    assert "33% of an epoch:" in text and "epoch(s)" not in text


def _measured_peak(config, env) -> int:
    """Peak resident bytes of `trainer --config` in a child process (ru_maxrss of the children of a fresh helper)."""
    import subprocess
    import sys

    code = ("import resource, subprocess, sys; p = subprocess.run([sys.executable, '-m', 'trainer', '--config', sys.argv[1]], "
            "capture_output=True, text=True); print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); "
            "print(p.stderr[-2000:])")
    done = subprocess.run([sys.executable, "-c", code, str(config)], env=env, capture_output=True, text=True, timeout=900)
    rc, peak = done.stdout.split("\n", 1)[0].split()
    assert rc == "0", done.stdout
    return int(peak)


@pytest.fixture(scope="module")
def wider_model(tmp_path_factory):
    """A 4-layer Llama of hidden size 256 whose activations, on rows of 700 tokens, outweigh the process itself."""
    import torch
    from conftest import make_char_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.data.templates import CHATML

    path = tmp_path_factory.mktemp("wider-llama")
    tokenizer = make_char_tokenizer(CHATML)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048))
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("training", [{}, {"method": "full"}, {"gradient_checkpointing": True}], ids=["lora", "full", "checkpointing"])
def test_memory_estimate_within_a_quarter_of_the_measured_peak(tmp_path, wider_model, training):
    """The plan's peak against the peak resident memory of the run, on this CPU. glibc would keep freed activations in
    its heap, which resident memory counts; MALLOC_MMAP_THRESHOLD_ returns them, so what is measured is what is held."""
    import os
    import random

    import yaml

    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(100))},
                          {"role": "assistant", "content": " ".join(rng.choice(["one", "two", "three"]) for _ in range(20))}]}
            for _ in range(16)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(wider_model)},
        "data": {"train": str(tmp_path / "data.jsonl"), "validation_split": 0, "max_seq_length": 1024},
        "training": {"max_steps": 2, "batch_size": 8, "precision": "fp32", "learning_rate": 0.001, **training},
        "output": {"dir": str(tmp_path / "run")}}))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    plan = json.loads(run_trainer("plan", "--config", str(config), "--json", env=env, timeout=600).stdout)
    assert plan["shape"]["micro_batch"] == 8 and plan["shape"]["tokens_per_row"] > 600
    measured = _measured_peak(config, env)
    estimated = plan["memory"]["peak_bytes"]
    assert abs(estimated / measured - 1) < 0.25, (estimated / 2**30, measured / 2**30, plan["memory"]["parts_bytes"])


def test_a_mixture_of_experts_counts_the_experts_a_token_goes_through(tmp_path):
    # A tiny gpt-oss (2 layers, 4 experts, 2 per token), built for real: the plan's counts are the model's, and one token's
    # backward pass reaches exactly experts_per_token experts in each layer, the share `active` counts.
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    from trainer.config import parse_config

    small = GptOssConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                         layer_types=["sliding_attention", "full_attention"], sliding_window=8)
    torch.manual_seed(0)
    model = GptOssForCausalLM(small)
    with torch.no_grad():
        for weight in model.parameters():  # random experts (they are built empty)
            weight.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "gpt-oss")
    arch = architecture(read_model_config(parse_config(f"model: {{name_or_path: {tmp_path / 'gpt-oss'}}}\ndata: {{train: x.jsonl}}\n"
                                                       "training: {epochs: 1}\n", check_files=False).model))
    assert arch.total == sum(p.numel() for p in model.parameters()) and (arch.experts, arch.experts_per_token) == (4, 2)
    experts = {name: p for name, p in model.named_parameters() if ".experts." in name}
    assert arch.expert_params == sum(p.numel() for p in experts.values())
    assert arch.active == arch.total - arch.expert_params // 2
    model(input_ids=torch.tensor([[5]])).logits.square().sum().backward()  # one token
    reached = {name: sum(bool(p.grad[e].abs().sum() > 0) for e in range(4)) for name, p in experts.items()}
    assert set(reached.values()) == {2}, reached


@pytest.mark.integration
def test_gpt_oss_20b_plan_against_its_model_card(tmp_path):
    """configs/gpt-oss-20b-lora-gpu.yaml: 20.9 billion parameters, 3.6 billion a token goes through (the model card's
    21B / 3.6B active, the latter without the input embeddings), bf16 weights (MXFP4 dequantised) on an 80 GB GPU."""
    from test_launch import HUB_CONFIGS

    from conftest import REPO

    snapshot = tmp_path / "hub" / "models--openai--gpt-oss-20b" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(HUB_CONFIGS["openai/gpt-oss-20b"]))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    result = run_trainer("plan", "--config", str(REPO / "configs" / "gpt-oss-20b-lora-gpu.yaml"), "--json",
                         env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    p = plan["parameters"]
    assert round(p["base"] / 1e9, 1) == 20.9 and p["experts"] == "4 of 32"
    embeddings = 201088 * 2880
    assert round((p["per_token"] - embeddings) / 1e9, 2) == 3.61
    assert plan["time"]["flops_per_token"] == 6 * p["per_token"]  # 4 + 2 (checkpointing) x the parameters a token goes through
    rows = {row["gpu"]: row for row in plan["gpus"]["rows"]}
    assert rows["H100 80GB"]["fits"] and not rows["A100 40GB"]["fits"]
    assert rows["H100 80GB"]["peak_gib"] > p["base"] * 2 / 2**30  # the bf16 weights and more


def test_gpt_oss_mxfp4_experts_load_dequantised_for_training(tmp_path, tiny_model_dir):
    # gpt-oss's MXFP4 kernels have no backward pass: its checkpoint is loaded with Mxfp4Config(dequantize=True) (bf16
    # weights, what the plan counts), as OpenAI's fine-tuning guide loads it; other checkpoints load as they are.
    from test_launch import HUB_CONFIGS

    from trainer.models import _dequantised_mxfp4

    folder = tmp_path / "gpt-oss-20b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HUB_CONFIGS["openai/gpt-oss-20b"]))
    model = load_config(str(tiny_config(tmp_path, tiny_model_dir))).model
    options = _dequantised_mxfp4(str(folder), model)
    assert options["quantization_config"].dequantize is True
    assert _dequantised_mxfp4(str(tiny_model_dir), model) == {}
