"""AutoTrain Advanced LLM YAML files are read as ours."""
import json
import re

import pytest
import yaml

from trainer.config import parse_config
from trainer.backends.autotrain.convert import translate
from trainer.backends.autotrain.fields import FIELDS
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


def test_convert_command_prints_valid_trainer_yaml(tmp_path, cli):
    source = tmp_path / "autotrain.yml"
    source.write_text(AUTOTRAIN_YAML.replace("${HF_TOKEN}", "hf_canary_token"))
    result = cli("convert", "--from", "autotrain", str(source), env={"HF_USERNAME": "me"})
    assert result.returncode == 0, result.stderr
    assert "hf_canary_token" not in result.stdout + result.stderr
    assert "translated to trainer's format" in result.stderr
    converted = tmp_path / "converted.yaml"
    converted.write_text(result.stdout)
    check = cli("validate", "--config", str(converted))
    assert check.returncode == 0, check.stderr
    assert "AutoTrain" not in check.stderr  # it is now our own format


# --- llm-dpo and llm-orpo ------------------------------------------------------------------------------------------

# As AutoTrain's own examples write them (configs/llm_finetuning/llama3-8b-dpo-qlora.yml: task llm with
# params.trainer; smollm2_orpo.yml: task llm-orpo), with local data.
AUTOTRAIN_DPO_YAML = """\
task: llm
base_model: gpt2
project_name: autotrain-llama3-8b-dpo-qlora
log: tensorboard
backend: local
data:
  path: {data}
  train_split: train
  valid_split: null
  chat_template: chatml
  column_mapping:
    text_column: better
    rejected_text_column: worse
    prompt_text_column: prompt
params:
  trainer: dpo
  block_size: 1024
  model_max_length: 2048
  max_prompt_length: 512
  dpo_beta: 0.25
  epochs: 3
  batch_size: 2
  lr: 3e-5
  peft: true
  quantization: int4
  target_modules: all-linear
  padding: right
  optimizer: adamw_torch
  scheduler: linear
  gradient_accumulation: 4
  mixed_precision: fp16
hub:
  username: ${{HF_USERNAME}}
  token: ${{HF_TOKEN}}
  push_to_hub: false
"""

AUTOTRAIN_ORPO_YAML = """\
task: llm-orpo
base_model: gpt2
project_name: autotrain-smallm2-orpo
log: tensorboard
backend: local
data:
  path: argilla/distilabel-capybara-dpo-7k-binarized
  train_split: train
  valid_split: null
  chat_template: tokenizer
  column_mapping:
    text_column: chosen
    rejected_text_column: rejected
    prompt_text_column: prompt
params:
  block_size: 1024
  model_max_length: 2048
  max_prompt_length: 512
  dpo_beta: 0.5
  epochs: 3
  batch_size: 2
  lr: 3e-5
  peft: true
  quantization: none
  lora_dropout: 0.1
  target_modules: all-linear
hub:
  username: someone
  token: null
  push_to_hub: false
"""


def test_autotrain_dpo_file_translates(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_canary_token")
    ours, notices, _ = translate(yaml.safe_load(AUTOTRAIN_DPO_YAML.format(data="org/pairs")))
    cfg = parse_config(yaml.safe_dump(ours), check_files=False)
    assert cfg.training.objective == "dpo" and cfg.training.dpo.beta == 0.25
    assert cfg.training.dpo.loss == "sigmoid" and cfg.training.dpo.sft_weight == 0  # AutoTrain's only loss, no SFT term
    assert cfg.data.format == "preference" and cfg.data.train_on == "assistant"
    assert cfg.data.columns.chosen == "better" and cfg.data.columns.rejected == "worse" and cfg.data.columns.prompt is None
    assert cfg.data.chat_template == "chatml" and cfg.data.max_seq_length == 1024 and cfg.data.train == "org/pairs:train"
    assert cfg.training.method == "qlora" and cfg.training.epochs == 3 and cfg.training.learning_rate == 3e-5
    assert cfg.training.lora.dropout == 0  # what AutoTrain's DPO trains with: TRL switches dropout off
    text = "\n".join(notices)
    assert "params.lora_dropout 0.05 becomes training.lora.dropout: 0" in text
    assert "llm-dpo cuts every prompt to its last 512 tokens (params.max_prompt_length)" in text
    assert "has no trainer equivalent" not in text  # every key it has is used or explained


def test_autotrain_orpo_file_translates():
    ours, notices, _ = translate(yaml.safe_load(AUTOTRAIN_ORPO_YAML))
    cfg = parse_config(yaml.safe_dump(ours), check_files=False)
    assert cfg.training.objective == "orpo" and cfg.data.format == "preference"
    assert cfg.training.orpo.weight == 0.1  # AutoTrain 0.8.36 leaves TRL's ORPO beta at 0.1 whatever dpo_beta says
    assert cfg.training.dpo.beta == 0.1  # dpo_beta is not taken for ORPO's lambda, nor kept as a DPO setting
    assert cfg.training.method == "lora" and cfg.training.lora.dropout == 0
    assert cfg.data.chat_template == "tokenizer" and cfg.data.columns.to_dict() == {k: None for k in cfg.data.columns.to_dict()}
    text = "\n".join(notices)
    assert "params.dpo_beta is not used by llm-orpo" in text and "lambda 0.1" in text
    assert "llm-orpo cuts the prompt of a pair longer than params.block_size to its last 512 tokens" in text


@pytest.mark.parametrize("task, trainer, objective", [
    ("llm-dpo", None, "dpo"), ("llm-orpo", None, "orpo"), ("llm", "dpo", "dpo"), ("llm-sft", "orpo", "orpo"),
    ("llm-dpo", "orpo", "orpo"),  # AutoTrain's parser: params.trainer overrides what the task says
    ("llm-dpo", "sft", "sft"), ("llm", "default", "sft"),
])
def test_the_objective_is_what_autotrain_would_train(task, trainer, objective):
    source = {"task": task, "base_model": "gpt2", "params": {"trainer": trainer} if trainer else {}}
    ours, _, _ = translate(source)
    assert ours["training"].get("objective", "sft") == objective


@pytest.mark.parametrize("source, message", [
    ({"task": "llm-reward"}, r"AutoTrain task 'llm-reward' \(reward modelling\) has no trainer equivalent; trainer translates llm-sft, llm-dpo and llm-orpo"),
    ({"task": "llm", "params": {"trainer": "reward"}}, r"params.trainer 'reward' \(reward modelling\) has no trainer equivalent"),
    ({"task": "llm-dpo", "params": {"model_ref": "org/other", "peft": False}}, r"params.model_ref: trainer's dpo compares with the model it starts from"),
    ({"task": "text-classification"}, r"'text-classification' is not a language-model task"),
])
def test_what_has_no_trainer_equivalent_is_refused(source, message):
    with pytest.raises(ValueError, match=message):
        translate({"base_model": "gpt2", **source})


def test_model_ref_that_autotrain_ignores_is_said():
    _, notices, _ = translate({"task": "llm-dpo", "base_model": "gpt2", "params": {"model_ref": "org/other", "peft": True}})
    assert any("params.model_ref is not used: with peft, AutoTrain ignores it too" in n for n in notices)


def test_preference_pairs_without_a_chat_template_are_said():
    ours, notices, _ = translate({"task": "llm-dpo", "base_model": "gpt2", "data": {"path": "org/d", "chat_template": None}})
    assert "chat_template" not in ours["data"] and ours["data"]["format"] == "preference"
    assert any("without data.chat_template trains on the prompt and answer text exactly as written" in n for n in notices)


def test_preference_keys_in_an_sft_file_are_said():
    _, notices, _ = translate({"task": "llm-sft", "base_model": "gpt2", "params": {"dpo_beta": 0.3, "max_prompt_length": 64}})
    text = "\n".join(notices)
    assert "params.dpo_beta is not used: it belongs to llm-dpo and llm-orpo" in text
    assert "params.max_prompt_length is not used" in text


def test_a_wrong_dpo_value_points_at_its_autotrain_line(in_repo):
    with pytest.raises(UserError, match=r":4:13: params.dpo_beta \(trainer: training.dpo.beta\): -1 is out of range"):
        parse_config("task: llm-dpo\nbase_model: gpt2\nparams:\n  dpo_beta: -1\n", "autotrain.yml", check_files=False)


def test_convert_dpo_command_gives_a_config_that_reads_autotrains_data(tmp_path, cli):
    """AutoTrain's DPO data (a text prompt beside chosen and rejected as whole conversations, as in
    argilla/distilabel-capybara-dpo-7k-binarized) is read by the converted config as AutoTrain reads it."""
    from trainer.data.pipeline import load_examples

    rows = [{"prompt": f"Name colour {i}", "better": [{"role": "user", "content": f"Name colour {i}"}, {"role": "assistant", "content": "red"}],
             "worse": [{"role": "user", "content": f"Name colour {i}"}, {"role": "assistant", "content": "a car"}]} for i in range(3)]
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = tmp_path / "autotrain.yml"
    source.write_text(AUTOTRAIN_DPO_YAML.format(data=tmp_path / "pairs"))
    result = cli("convert", "--from", "autotrain", str(source), env={"HF_USERNAME": "me", "HF_TOKEN": "hf_canary_token"})
    assert result.returncode == 0, result.stderr
    converted = tmp_path / "converted.yaml"
    converted.write_text(result.stdout)
    assert "hf_canary_token" not in result.stdout
    check = cli("validate", "--config", str(converted))
    assert check.returncode == 0, check.stderr
    config = parse_config(result.stdout, str(converted))
    pairs, report = load_examples(config.data.train, config)
    assert len(pairs) == 3 and report.problems == []
    assert [m.content for m in pairs[0].chosen.messages] == ["Name colour 0", "red"] and pairs[0].prompt_messages == 1
    assert pairs[0].rejected.messages[-1].content == "a car"


# --- converting needs neither the secrets nor the data -------------------------------------------------------------


def test_convert_needs_no_secret_when_nothing_is_pushed(tmp_path, monkeypatch, cli):
    """AutoTrain's own examples write hub.username: ${HF_USERNAME} and hub.token: ${HF_TOKEN}; with push_to_hub: false a
    run uses neither, so neither converting nor validating the file asks for them."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_USERNAME", raising=False)
    source = tmp_path / "autotrain.yml"
    source.write_text(AUTOTRAIN_YAML)
    result = cli("convert", "--from", "autotrain", str(source))
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr
    converted = tmp_path / "converted.yaml"
    converted.write_text(result.stdout)
    assert yaml.safe_load(result.stdout)["output"]["push_to_hub"] is None
    check = cli("validate", "--config", str(converted))
    assert check.returncode == 0, check.stderr
    check = cli("validate", "--config", str(source))
    assert check.returncode == 0, check.stderr


def test_convert_carries_the_hub_user_as_a_reference(tmp_path, monkeypatch, cli):
    """push_to_hub: true: the repository is written as ${HF_USERNAME}/<project>, and what a push needs (HF_USERNAME,
    HF_TOKEN) is asked for where the converted config is validated or run, not where it is converted."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_USERNAME", raising=False)
    source = tmp_path / "autotrain.yml"
    source.write_text(AUTOTRAIN_YAML.replace("push_to_hub: false", "push_to_hub: true"))
    result = cli("convert", "--from", "autotrain", str(source))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["output"]["push_to_hub"]["repo_id"] == "${HF_USERNAME}/my-autotrain-llm"
    converted = tmp_path / "converted.yaml"
    converted.write_text(result.stdout)
    check = cli("validate", "--config", str(converted))
    assert check.returncode == 2 and "the environment variable HF_USERNAME is not set" in check.stderr, check.stderr
    check = cli("validate", "--config", str(converted), env={"HF_USERNAME": "me"})
    assert check.returncode == 2 and "uploading to the Hub requires a token; set the HF_TOKEN" in check.stderr, check.stderr
    check = cli("validate", "--config", str(converted), env={"HF_USERNAME": "me", "HF_TOKEN": "hf_canary_token"})
    assert check.returncode == 0, check.stderr
    check = cli("validate", "--config", str(source))  # a run of the AutoTrain file itself would push
    assert check.returncode == 2 and "hub.username: the environment variable HF_USERNAME is not set" in check.stderr, check.stderr


def test_convert_warns_when_the_data_is_not_on_this_machine(tmp_path, cli):
    """Someone else's config names their data; translating it warns that it is not here, naming the file and the key,
    and still writes the YAML."""
    source = tmp_path / "autotrain.yml"
    source.write_text(AUTOTRAIN_DPO_YAML.format(data=tmp_path / "elsewhere"))
    result = cli("convert", "--from", "autotrain", str(source), env={"HF_USERNAME": "me", "HF_TOKEN": "hf_canary_token"})
    assert result.returncode == 0, result.stderr
    assert re.search(rf"warning: {re.escape(str(source))}:\d+:\d+: data.train_split \(trainer: data.train\): .*"
                     rf"no file or folder '{re.escape(str(tmp_path / 'elsewhere' / 'train.jsonl'))}'", result.stderr), result.stderr
    assert yaml.safe_load(result.stdout)["data"]["train"] == str(tmp_path / "elsewhere" / "train.jsonl")
    converted = tmp_path / "converted.yaml"
    converted.write_text(result.stdout)
    check = cli("validate", "--config", str(converted))  # where it runs, the data must be there
    assert check.returncode == 2 and "data.train: no file or folder" in check.stderr, check.stderr
