"""`trainer plan`: parameter counts equal the built model's, the parts of the estimate, and the CLI."""
import json

import pytest

from conftest import run_trainer, tiny_config
from trainer.config import load_config
from trainer.plan.params import architecture, count_parameters, read_model_config


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
    assert lora["logits"] == 4 * 10 * arch.vocab_size * (2 + 12)
    arch, _, qlora = parts("qlora")
    assert qlora["weights"] < lora["weights"] * 0.5 + arch.embedding_params * 2


def test_plan_command_json(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir)
    result = run_trainer("plan", "--config", str(config), "--json", "--requests", "1000000", "--price-per-million", "0.2", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    assert plan["parameters"]["trainable"] > 0 and plan["memory"]["peak_bytes"] > 0
    assert [r["gpu"] for r in plan["gpus"]["rows"]][:2] == ["T4", "L4"] and all(r["fits"] for r in plan["gpus"]["rows"])
    assert plan["data"]["examples"] == 12 and plan["data"]["openai_default_epochs"] == 8
    prompts = plan["hosting"]["prompt_tokens"]
    assert prompts["few_shot"] > prompts["tuned"] and prompts["retrieval"] > prompts["tuned"]
    saved = plan["hosting"]["saved_per_month"]["few_shot"]
    assert saved == pytest.approx((prompts["few_shot"] - prompts["tuned"]) * 1000000 / 1e6 * 0.2)
