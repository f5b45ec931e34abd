"""AutoTrain Advanced LLM YAML files are read as ours."""
import pytest

from conftest import run_trainer
from trainer.config import parse_config
from trainer.config.autotrain import FIELDS, translate
from trainer.errors import UserError

AUTOTRAIN_YAML = """\
task: llm-sft
base_model: gpt2
project_name: my-autotrain-llm
log: tensorboard
backend: local
data:
  path: data/recipes
  train_split: train
  valid_split: validation
  chat_template: tokenizer
  column_mapping:
    text_column: messages
params:
  block_size: 512
  model_max_length: 1024
  epochs: 3
  batch_size: 2
  lr: 1e-5
  peft: true
  quantization: int4
  target_modules: q_proj,v_proj
  padding: right
  optimizer: paged_adamw_8bit
  scheduler: cosine
  gradient_accumulation: 8
  mixed_precision: bf16
  merge_adapter: true
hub:
  username: ${HF_USERNAME}
  token: ${HF_TOKEN}
  push_to_hub: false
"""


def test_autotrain_file_translates_field_by_field(in_repo, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_canary_token")
    monkeypatch.setenv("HF_USERNAME", "someone")
    cfg = parse_config(AUTOTRAIN_YAML, "autotrain.yml")
    assert cfg.model.name_or_path == "gpt2"
    assert cfg.data.train == "data/recipes/train.jsonl"
    assert cfg.data.validation == "data/recipes/validation.jsonl"
    assert cfg.data.chat_template == "tokenizer"
    assert cfg.data.max_seq_length == 512  # block_size wins over model_max_length
    assert cfg.training.method == "qlora"
    assert cfg.training.learning_rate == 1e-5
    assert cfg.training.epochs == 3
    assert cfg.training.gradient_accumulation == 8
    assert cfg.training.optimizer == "adamw_8bit"
    assert cfg.training.precision == "bf16"
    assert cfg.training.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.training.warmup_ratio == 0.1  # AutoTrain's default, kept so the run means the same
    assert cfg.output.dir == "my-autotrain-llm"
    assert cfg.output.merge_adapter is True
    assert cfg.logging.report_to == "tensorboard"
    assert "hf_canary_token" not in cfg.to_yaml()


def test_autotrain_notices_name_what_is_not_used():
    _, notices, _ = translate({"task": "llm-sft", "base_model": "gpt2", "params": {"padding": "left", "fancy": 1}, "hub": {"token": "x"}})
    text = "\n".join(notices)
    assert "params.padding is not used" in text
    assert "params.fancy has no trainer equivalent" in text
    assert "hub.token is not copied" in text


def test_full_finetune_and_plain_text():
    ours, _, _ = translate({"task": "llm", "base_model": "gpt2", "data": {"path": "org/data", "chat_template": None,
                                                                        "column_mapping": {"text_column": "body"}}})
    assert ours["training"]["method"] == "full"
    assert ours["data"]["train"] == "org/data:train"
    assert ours["data"]["format"] == "text" and ours["data"]["columns"]["text"] == "body"


def test_int8_has_no_equivalent(in_repo):
    with pytest.raises(UserError, match=r"task: params.quantization 'int8' has no trainer equivalent"):
        parse_config("task: llm-sft\nbase_model: gpt2\nparams:\n  peft: true\n  quantization: int8\n")


def test_every_mapped_field_names_a_real_key():
    from trainer.config.schema import subschema

    for field in FIELDS:
        if field.ours:
            assert subschema(tuple(field.ours.split("."))) is not None, field


def test_convert_command_prints_valid_trainer_yaml(tmp_path):
    source = tmp_path / "autotrain.yml"
    source.write_text(AUTOTRAIN_YAML.replace("${HF_TOKEN}", "hf_canary_token"))
    result = run_trainer("convert", "--from", "autotrain", str(source), env={"HF_USERNAME": "me"})
    assert result.returncode == 0, result.stderr
    assert "hf_canary_token" not in result.stdout + result.stderr
    assert "translated to trainer's format" in result.stderr
    converted = tmp_path / "converted.yaml"
    converted.write_text(result.stdout)
    check = run_trainer("validate", "--config", str(converted))
    assert check.returncode == 0, check.stderr
    assert "AutoTrain" not in check.stderr  # it is now our own format
