"""The AutoTrain backend: translation both ways, differences, data layout, model hand-over, log following."""
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_char_tokenizer, run_trainer, tiny_llama
from trainer.config import parse_config
from trainer.backends.autotrain.convert import translate
from trainer.backends.autotrain.differences import differences
from trainer.backends.autotrain.fields import FIELDS, mapping_table
from trainer.backends.autotrain.params import export, project_name
from trainer.errors import EXIT_STOPPED

NON_DEFAULT = """
model: {name_or_path: org/model, attn_implementation: flash_attention_2}
data: {train: data/recipes/train.jsonl, max_seq_length: 384, packing: true, train_on: all}
training:
  method: lora
  lora: {r: 8, alpha: 24, dropout: 0.1, target_modules: [q_proj, v_proj]}
  epochs: 3
  batch_size: 3
  gradient_accumulation: 5
  learning_rate: 1.5e-4
  scheduler: linear
  warmup_ratio: 0.2
  weight_decay: 0.01
  max_grad_norm: 0.5
  optimizer: adamw_8bit
  precision: bf16
  gradient_checkpointing: true
  seed: 7
  keep_last: 4
output: {dir: runs/Recipe run_v2, merge_adapter: true}
logging: {report_to: tensorboard, log_every: 3}
backend: {name: autotrain}
"""


def config_of(text: str = NON_DEFAULT):
    return parse_config(text, check_files=False)


def preference_config(objective: str) -> str:
    """NON_DEFAULT as dpo or orpo: pairs, no packing, answers only, dropout 0 (AutoTrain's dpo and orpo train without)."""
    text = NON_DEFAULT.replace("packing: true, train_on: all", "format: preference").replace("dropout: 0.1", "dropout: 0")
    settings = "  dpo: {beta: 0.3}\n" if objective == "dpo" else "  orpo: {weight: 0.1}\n"
    return text.replace("  method: lora\n", f"  method: lora\n  objective: {objective}\n{settings}")


@pytest.mark.parametrize("objective", ["sft", "dpo", "orpo"])
def test_every_mapped_field_survives_export_and_translation_back(objective):
    config = config_of(NON_DEFAULT if objective == "sft" else preference_config(objective))
    document = export(config, mixed_precision="bf16")
    back, _, _ = translate(document)
    ours = config.to_dict()
    checked = []
    for field in FIELDS:
        if field.ours is None or field.to_autotrain is None or field.ours == "output.merge_adapter" or objective not in field.objectives:
            continue
        node_ours, node_back = ours, back
        for part in field.ours.split("."):
            node_ours, node_back = node_ours[part], node_back[part]
        assert node_back == node_ours, field.autotrain
        checked.append(field.autotrain)
    assert len(checked) >= 18
    again = config_of(yaml.safe_dump(back))
    assert again.training.objective == objective and again.training.lora.dropout == config.training.lora.dropout
    assert (again.training.dpo, again.training.orpo) == (config.training.dpo, config.training.orpo)
    assert (again.data.format == "preference") == (objective != "sft")


def test_export_writes_autotrain_0836_shape():
    document = export(config_of(), base_model="/tmp/base", mixed_precision="bf16")
    assert document["task"] == "llm-sft" and document["backend"] == "local"
    assert document["base_model"] == "/tmp/base"
    # 0.8.36 reads these unconditionally: KeyError without them
    assert set(document["hub"]) == {"username", "token", "push_to_hub"} and document["hub"]["token"] is None
    assert set(document["data"]) == {"path", "train_split", "valid_split", "chat_template", "column_mapping"}
    p = document["params"]
    assert p["peft"] is True and p["quantization"] is None  # int4 is AutoTrain's default: LoRA must say none
    assert p["optimizer"] == "adamw_bnb_8bit" and p["target_modules"] == "q_proj,v_proj" and p["lora_alpha"] == 24
    assert p["block_size"] == p["model_max_length"] == 384
    assert p["disable_gradient_checkpointing"] is False and p["use_flash_attention_2"] is True
    assert p["merge_adapter"] is False  # trainer merges after collecting; AutoTrain's merge deletes the adapter
    assert p["epochs"] == 3 and p["mixed_precision"] == "bf16" and document["log"] == "tensorboard"


def test_methods_map_to_peft_and_quantization():
    assert export(config_of(NON_DEFAULT.replace("method: lora", "method: qlora")))["params"]["quantization"] == "int4"
    full = export(config_of(NON_DEFAULT.replace("method: lora", "method: full")))["params"]
    assert full["peft"] is False and "lora_r" not in full


@pytest.mark.parametrize("output_dir, expected", [
    ("runs/quickstart", "quickstart"),
    ("runs/Recipe run_v2", "Recipe-run-v2"),
    ("runs/__weird__//", "weird"),
    ("runs/ünïcode.model", "n-code-model"),
    ("runs/" + "x" * 80, "x" * 50),
    ("runs/___", "trainer-run"),
    ("/abs/path/a.b-c", "a-b-c"),
])
def test_project_name_is_valid_for_autotrain(output_dir, expected):
    name = project_name(output_dir)
    assert name == expected
    assert 1 <= len(name) <= 50 and all(c.isalnum() and c.isascii() or c == "-" for c in name)


DIFFERENCES = [
    ("training: {method: dora, epochs: 1}", "training.method"),
    ("training: {epochs: 1}\ndata: {train: x.jsonl, train_on: assistant}", "data.train_on"),
    ("training: {max_steps: 10}", "training.max_steps"),
    ("training: {epochs: 1.5}", "training.epochs"),
    ("training: {epochs: 1, early_stopping: {patience: 2}}", "training.early_stopping"),
    ("training: {epochs: 1, eval_every: 5}", "training.eval_every"),
    ("training: {epochs: 1, save_every: 5}", "training.save_every"),
    ("training: {epochs: 1, optimizer: sgd}", "training.optimizer"),
    ("training: {epochs: 1, lora: {alpha: 16.5}}", "training.lora.alpha"),
    ("model: {name_or_path: org/m, dtype: bfloat16}\ntraining: {epochs: 1}", "model.dtype"),
    ("model: {name_or_path: org/m, revision: v1}\ntraining: {epochs: 1}", "model.revision"),
]


@pytest.mark.parametrize("snippet, key", DIFFERENCES)
def test_each_difference_is_named(snippet, key):
    text = "model: {name_or_path: org/m}\ndata: {train: x.jsonl}\n" + snippet
    merged = {}
    for part in (yaml.safe_load(text.split("\n")[0]), yaml.safe_load("\n".join(text.split("\n")[1:]))):
        for section, value in part.items():
            merged.setdefault(section, {}).update(value)
    found = {".".join(path) for path, _ in differences(parse_config(yaml.safe_dump(merged), check_files=False))}
    assert key in found


def test_a_plain_text_run_differs_only_in_packing():
    config = parse_config("model: {name_or_path: org/m}\ndata: {train: x.jsonl, format: text, train_on: all}\n"
                          "training: {epochs: 2}\n", check_files=False)
    assert [".".join(p) for p, _ in differences(config)] == ["data.packing"]


def test_differences_stop_the_run_naming_each_field_with_exit_2(tmp_path, cli):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    (venv / "autotrain").write_text("")
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"model: {{name_or_path: {tmp_path}}}\ndata: {{train: {REPO}/data/recipes/train.jsonl}}\n"
                   f"training: {{method: dora, max_steps: 3, early_stopping: {{patience: 1}}}}\n"
                   f"backend: {{name: autotrain, autotrain: {{python: {venv / 'python'}}}}}\n")
    result = cli("--config", str(cfg))
    assert result.returncode == 2, result.stderr
    for key in ("training.method", "training.max_steps", "training.early_stopping", "data.train_on", "data.packing"):
        assert key in result.stderr
    assert "allow_differences: true" in result.stderr and "Traceback" not in result.stderr


def test_missing_environment_is_explained(tmp_path, cli):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"model: {{name_or_path: {tmp_path}}}\ndata: {{train: {REPO}/data/recipes/train.jsonl}}\n"
                   f"training: {{epochs: 1}}\nbackend: {{name: autotrain, autotrain: {{python: {tmp_path}/nope/python, "
                   "allow_differences: true}}\n")
    result = cli("--config", str(cfg))
    assert result.returncode == 2
    assert "backend.autotrain.python" in result.stderr and "trainer backends setup autotrain" in result.stderr


def test_export_command_prints_yaml_and_warns(tmp_path, cli):
    result = cli("export", "--to", "autotrain", "--config", str(REPO / "configs" / "quickstart.yaml"))
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["task"] == "llm-sft" and document["params"]["lr"] == 0.002
    assert "data.train_on" in result.stderr and ".gguf" in result.stderr


def test_export_command_writes_llm_orpo_and_warns(tmp_path, cli):
    cfg = tmp_path / "orpo.yaml"
    cfg.write_text(f"model: {{name_or_path: org/m}}\ndata: {{train: {REPO}/data/recipes/train.jsonl}}\n"
                   "training: {epochs: 1, objective: orpo, orpo: {weight: 0.3}}\n")
    result = cli("export", "--to", "autotrain", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["task"] == "llm-orpo" and document["data"]["column_mapping"]["rejected_text_column"] == "rejected"
    assert "warning: training.orpo.weight: AutoTrain's llm-orpo always trains with lambda 0.1" in result.stderr
    assert "warning: training.lora.dropout" in result.stderr


def test_docs_show_the_same_table():
    assert mapping_table() in (REPO / "docs" / "autotrain.md").read_text()


# --- data layout ---------------------------------------------------------------------------------------------------

def _prepared(tmp_path, template: str, fmt: str = "auto"):
    from trainer.data.pipeline import prepare_data
    from trainer.data.templates import CHATML

    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(5)]
    if fmt == "text":
        rows = [{"text": f"plain {i}"} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = parse_config(f"model: {{name_or_path: org/m}}\ndata: {{train: {tmp_path}/d.jsonl, validation_split: 0.4, "
                          f"chat_template: {template}, format: {fmt}{', train_on: all' if fmt == 'text' else ''}}}\ntraining: {{epochs: 1}}\n", check_files=False)
    tokenizer = make_char_tokenizer(CHATML)
    return config, tokenizer, prepare_data(config, tokenizer)


def test_data_goes_as_messages_when_autotrain_applies_the_same_template(tmp_path):
    from trainer.backends.autotrain.handover import write_data

    config, tokenizer, data = _prepared(tmp_path, "tokenizer")
    write_data(config, tokenizer, data, tmp_path / "out")
    train = [json.loads(l) for l in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    valid = [json.loads(l) for l in (tmp_path / "out" / "validation.jsonl").read_text().splitlines()]
    assert len(train) == 3 and len(valid) == 2
    assert train[0]["messages"][0] == {"role": "system", "content": "be brief"}
    assert export(config)["data"]["column_mapping"] == {"text_column": "messages"}
    assert export(config)["data"]["chat_template"] == "tokenizer"


def test_data_goes_as_rendered_text_for_trainers_own_templates(tmp_path):
    from trainer.backends.autotrain.handover import write_data

    config, tokenizer, data = _prepared(tmp_path, "zephyr")
    write_data(config, tokenizer, data, tmp_path / "out")
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text"} and first["text"].startswith("<|system|>\nbe brief</s>\n<|user|>\n")
    assert export(config)["data"]["chat_template"] is None
    assert export(config)["data"]["column_mapping"] == {"text_column": "text"}


def test_plain_text_goes_as_text(tmp_path):
    from trainer.backends.autotrain.handover import write_data

    config, tokenizer, data = _prepared(tmp_path, "tokenizer", fmt="text")
    write_data(config, tokenizer, data, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])["text"].startswith("plain ")


# --- preference pairs (llm-dpo, llm-orpo) --------------------------------------------------------------------------

def recipe_pairs(path: Path, count: int, shortest: bool = False) -> Path:
    """`count` pairs from the recipe task (the first, or the shortest) in TRL's layout: the reference ingredients chosen,
    the same list with its last ingredient swapped for salt rejected."""
    lines = (REPO / "data" / "recipes" / "train.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in (sorted(lines, key=len) if shortest else lines)[:count]]
    pairs = []
    for row in rows:
        messages = row["messages"]
        wrong = json.dumps(json.loads(messages[-1]["content"])[:-1] + ["salt"])
        pairs.append({"prompt": messages[:-1], "chosen": [messages[-1]], "rejected": [{"role": "assistant", "content": wrong}]})
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def _preference_prepared(tmp_path, tokenizer, objective: str = "dpo", max_seq_length: int = 512, count: int = 4):
    from trainer.data.pipeline import prepare_data

    config = parse_config(yaml.safe_dump({
        "model": {"name_or_path": "org/m"},
        "data": {"train": str(recipe_pairs(tmp_path / "pairs.jsonl", count)), "max_seq_length": max_seq_length, "validation_split": 0.25},
        "training": {"epochs": 1, "objective": objective}}), check_files=False)
    return config, prepare_data(config, tokenizer)


@pytest.mark.slow
def test_pairs_go_as_the_text_trainer_trains_cut_where_the_answer_begins(tmp_path, smollm2_tokenizer, capsys):
    """AutoTrain gets no template: TRL 0.13 tokenizes prompt and answer apart and appends the end-of-text token to the
    answer, which gives exactly the tokens and the trained positions of trainer's own pairs."""
    from trainer.backends.autotrain.handover import write_data

    tok = smollm2_tokenizer
    config, data = _preference_prepared(tmp_path, tok)
    write_data(config, tok, data, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == len(data.train) == 3 and (tmp_path / "out" / "validation.jsonl").is_file()
    assert rows[0]["prompt"].startswith("<|im_start|>system\nYou are a helpful recipe assistant")
    assert rows[0]["prompt"].endswith("Generic ingredients: <|im_end|>\n<|im_start|>assistant\n")
    assert rows[0]["rejected"].endswith(', "salt"]')
    for row, pair in zip(rows, data.train):
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        for side, tokenized in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            answer = tok(row[side], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert list(tokenized.input_ids[: len(prompt) + len(answer)]) == prompt + answer
            assert [t for t, label in zip(tokenized.input_ids, tokenized.labels) if label != -100] == answer
    assert "warning" not in capsys.readouterr().err  # nothing differs for SmolLM2's template


def test_pairs_that_autotrain_trains_unlike_trainer_are_counted(tmp_path, capsys):
    """The character tokenizer's end-of-text token (</s>) does not close ChatML's turns: TRL's appended one is trained
    as well; ORPO cuts pairs longer than max_seq_length its own way."""
    from trainer.backends.autotrain.handover import write_data
    from trainer.data.templates import CHATML

    tokenizer = make_char_tokenizer(CHATML)
    config, data = _preference_prepared(tmp_path, tokenizer, "orpo", max_seq_length=400)
    write_data(config, tokenizer, data, tmp_path / "out")
    said = capsys.readouterr().err
    assert "warning: AutoTrain's llm-orpo (TRL 0.13) appends </s> to every answer, and 6 of 6 answers do not end with it" in said
    assert "pairs are longer than data.max_seq_length=400: AutoTrain's llm-orpo cuts their prompt to its last 200 tokens" in said
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert first["chosen"].endswith("]<|im_end|>")  # the turn's own end stays: only </s> would be TRL's


def test_export_writes_llm_dpo_and_llm_orpo():
    dpo = export(config_of(preference_config("dpo")))
    assert dpo["task"] == "llm-dpo" and dpo["params"]["dpo_beta"] == 0.3
    assert dpo["data"]["chat_template"] is None  # trainer renders the pairs; AutoTrain's own rendering differs (above)
    assert dpo["data"]["column_mapping"] == {"text_column": "chosen", "rejected_text_column": "rejected", "prompt_text_column": "prompt"}
    assert dpo["params"]["max_prompt_length"] == dpo["params"]["block_size"] == 384  # DPO then cuts as trainer does
    assert dpo["params"]["max_completion_length"] is None and dpo["params"]["lora_dropout"] == 0
    orpo = export(config_of(preference_config("orpo")))
    assert orpo["task"] == "llm-orpo" and "dpo_beta" not in orpo["params"]  # 0.8.36 does not pass it to ORPO
    assert orpo["params"]["max_prompt_length"] == 192


PREFERENCE_DIFFERENCES = [
    ("objective: dpo, dpo: {loss: ipo}", "training.dpo.loss"),
    ("objective: dpo, dpo: {sft_weight: 1}", "training.dpo.sft_weight"),
    ("objective: orpo, orpo: {weight: 0.2}", "training.orpo.weight"),
    ("objective: dpo, lora: {dropout: 0.1}", "training.lora.dropout"),
    ("objective: orpo, method: dora, lora: {dropout: 0}", "training.method"),
]


@pytest.mark.parametrize("snippet, key", PREFERENCE_DIFFERENCES)
def test_each_preference_difference_is_named(snippet, key):
    config = parse_config(f"model: {{name_or_path: org/m}}\ndata: {{train: x.jsonl}}\ntraining: {{epochs: 1, {snippet}}}\n", check_files=False)
    assert key in {".".join(path) for path, _ in differences(config)}


def test_a_dpo_run_without_dropout_trains_as_trainer_does():
    """AutoTrain's dpo and orpo do not pack and train the answers only: only what the config asks beyond that differs."""
    for objective in ("dpo", "orpo"):
        config = parse_config(f"model: {{name_or_path: org/m}}\ndata: {{train: x.jsonl}}\n"
                              f"training: {{epochs: 2, objective: {objective}, lora: {{dropout: 0}}}}\n", check_files=False)
        assert differences(config) == []


def test_validate_names_what_autotrain_cannot_do_for_orpo(tmp_path, cli):
    cfg = tmp_path / "x.yaml"
    pairs = recipe_pairs(tmp_path / "pairs.jsonl", 2)
    cfg.write_text(f"model: {{name_or_path: {tmp_path}}}\ndata: {{train: {pairs}}}\n"
                   "training: {epochs: 1, objective: orpo, orpo: {weight: 0.5}}\nbackend: {name: autotrain}\n")
    result = cli("validate", "--config", str(cfg))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training.orpo.weight: AutoTrain's llm-orpo always trains with lambda 0.1" in result.stderr  # a rule: no allowing it
    fixed = cli("validate", "--config", str(cfg), "--set", "training.orpo.weight=0.1")
    assert fixed.returncode == 2 and "training.lora.dropout" in fixed.stderr and "allow_differences: true" in fixed.stderr
    allowed = cli("validate", "--config", str(cfg), "--set", "training.orpo.weight=0.1", "--set", "training.lora.dropout=0")
    assert allowed.returncode == 0, allowed.stderr


def test_preference_figures_autotrain_logs_get_trainers_names(tmp_path):
    from trainer.backends.autotrain.process import AutoTrainLog
    from trainer.backends.autotrain.results import log_metrics

    log = AutoTrainLog(tmp_path / "a.log")
    log.feed("INFO     | 2026-12-01 18:50:01 | autotrain.trainers.common:on_log:226 - {'loss': 0.6931, 'grad_norm': 1.2, "
             "'learning_rate': 0.0001, 'rewards/chosen': 0.01, 'rewards/rejected': -0.02, 'rewards/accuracies': 0.5, "
             "'rewards/margins': 0.03, 'logps/chosen': -40.5, 'logps/rejected': -42.25, 'logits/chosen': -1.5, "
             "'logits/rejected': -1.4, 'epoch': 0.5}")
    log.close()
    config = config_of(preference_config("dpo").replace("log_every: 3", "log_every: 1").replace("tensorboard", "none"))
    log_metrics(config, tmp_path, log)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["step"] == 1 and row["loss"] == 0.6931 and row["reward_margin"] == 0.03 and row["reward_accuracy"] == 0.5
    assert row["logps_chosen"] == -40.5 and row["logps_rejected"] == -42.25 and row["reward_rejected"] == -0.02


# --- model materialisation -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rope_model_dir(tmp_path_factory):
    """A tiny Llama saved by transformers 5, with a rope_theta that is not the default (as SmolLM2's 100000)."""
    from trainer.data.templates import CHATML

    path = tmp_path_factory.mktemp("rope-llama")
    tokenizer = make_char_tokenizer(CHATML)
    model = tiny_llama(vocab_size=len(tokenizer))
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 100000.0}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_materialised_model_reads_as_transformers_448_expects(tmp_path, rope_model_dir):
    from trainer.backends.autotrain.handover import materialise_model
    from trainer.models import load_tokenizer

    saved = json.loads((rope_model_dir / "config.json").read_text())
    assert "rope_theta" not in saved and saved["rope_parameters"]["rope_theta"] == 100000.0  # what 4.48 would miss
    config = parse_config(f"model: {{name_or_path: {rope_model_dir}}}\ndata: {{train: x.jsonl}}\ntraining: {{epochs: 1}}\n", check_files=False)
    tokenizer = load_tokenizer(str(rope_model_dir))
    out = Path(materialise_model(config, tokenizer, tmp_path / "base"))
    written = json.loads((out / "config.json").read_text())
    assert written["rope_theta"] == 100000.0 and written["rope_scaling"] is None
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|im_start|>" in tok_config["chat_template"]
    assert (out / "model.safetensors").is_symlink() and (out / "model.safetensors").resolve() == (rope_model_dir / "model.safetensors").resolve()


def test_a_hub_id_is_passed_through(tmp_path):
    from trainer.backends.autotrain.handover import materialise_model

    config = parse_config("model: {name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct}\ndata: {train: x.jsonl}\ntraining: {epochs: 1}\n", check_files=False)
    assert materialise_model(config, None, tmp_path / "base") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not (tmp_path / "base").exists()


def test_legacy_config_keeps_scaled_rope():
    from trainer.backends.autotrain.handover import legacy_model_config

    data = legacy_model_config({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0}, "dtype": "bfloat16"})
    assert data["rope_theta"] == 500000.0 and data["rope_scaling"]["rope_type"] == "llama3" and data["rope_scaling"]["factor"] == 32.0
    assert data["torch_dtype"] == "bfloat16"


# --- following AutoTrain's log -------------------------------------------------------------------------------------

def test_log_follower_reads_losses_and_the_failure_it_logs(tmp_path):
    from trainer.backends.autotrain.process import AutoTrainLog, _failure_text

    log = AutoTrainLog(tmp_path / "a.log")
    for line in [  # as 0.8.36 writes them: its logger's line, then the progress bar's copy of the same dict
        "INFO     | 2026-11-24 05:50:01 | autotrain.trainers.common:on_log:226 - {'loss': 3.1234, 'grad_norm': 1.5, 'learning_rate': 0.0002, 'epoch': 0.5}",
        "{'loss': 3.1234, 'grad_norm': 1.5, 'learning_rate': 0.0002, 'epoch': 0.5}",
        "INFO     | 2026-11-24 05:50:02 | autotrain.trainers.common:on_log:226 - {'loss': 2.5, 'grad_norm': 1.1, 'learning_rate': 0.0001, 'epoch': 1.0}",
        "INFO     | 2026-11-24 05:50:03 | autotrain.trainers.common:on_log:226 - {'train_runtime': 12.5, 'train_samples_per_second': 4.0, 'train_steps_per_second': 0.32, 'train_loss': 2.8, 'epoch': 1.0}",
        "ERROR    | 2026-11-24 05:50:04 | autotrain.trainers.common:wrapper:216 - train has failed due to an exception: Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "FileNotFoundError: [Errno 2] No such file or directory: 'p/checkpoint-4/adapter_model.bin'",
    ]:
        log.feed(line)
    log.close()
    assert [row["loss"] for row in log.losses] == [3.1234, 2.5]
    assert log.final["train_runtime"] == 12.5
    assert log.failure is not None
    assert _failure_text(log.failure).startswith("FileNotFoundError: [Errno 2] No such file or directory")
    assert (tmp_path / "a.log").read_text().count("\n") == 7


# --- the real thing: AutoTrain 0.8.36 in its own environment, as a subprocess --------------------------------------

from trainer.demo import cache_dir  # noqa: E402

# Read at import, before the test session points TRAINER_CACHE at a private folder: the environment takes minutes
# to build, so it is made once per machine in the user's cache (as `trainer backends setup autotrain` does).
AUTOTRAIN_VENV = cache_dir() / "autotrain-0.8.36"


@pytest.fixture(scope="module")
def autotrain_python():
    from trainer.backends.autotrain.environment import environment_problem

    python = AUTOTRAIN_VENV / "bin" / "python"
    if environment_problem(python) is not None:
        result = run_trainer("backends", "setup", "autotrain", "--venv", str(AUTOTRAIN_VENV), timeout=3000)
        assert result.returncode == 0, result.stderr[-3000:]
    return python


def _autotrain_config(tmp_path, model_dir, python, **extra) -> Path:
    config = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(REPO / "data/recipes/train.jsonl"), "validation": str(REPO / "data/recipes/validation.jsonl"),
                 "max_seq_length": 256},
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32", "lora": {"r": 4, "alpha": 8}},
        "output": {"dir": str(tmp_path / "run")},
        "logging": {"log_every": 2},
        "backend": {"name": "autotrain", "autotrain": {"python": str(python), "allow_differences": True}},
    }
    for key, value in extra.items():
        section, name = key.split(".")
        config[section][name] = value
    path = tmp_path / "autotrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.integration
@pytest.mark.autotrain
@pytest.mark.slow
def test_materialised_model_computes_the_same_logits_in_autotrains_transformers(tmp_path, rope_model_dir, autotrain_python):
    """transformers 4.48 (AutoTrain's) must read the materialised folder as exactly the model trainer trains."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.backends.autotrain.handover import materialise_model
    from trainer.models import load_tokenizer

    config = parse_config(f"model: {{name_or_path: {rope_model_dir}}}\ndata: {{train: x.jsonl}}\ntraining: {{epochs: 1}}\n", check_files=False)
    folder = materialise_model(config, load_tokenizer(str(rope_model_dir)), tmp_path / "base")
    ids = [[11, 40, 41, 42, 43, 12, 50, 60, 70, 80, 90, 20, 30, 33, 44, 55, 66, 77, 88, 99] * 8]
    script = (
        "import json, sys, torch, transformers\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({folder!r}, torch_dtype=torch.float32).eval()\n"
        f"tok = AutoTokenizer.from_pretrained({folder!r})\n"
        f"logits = model(torch.tensor({ids})).logits[0, -1].tolist()\n"
        "print(json.dumps({'version': transformers.__version__, 'class': type(tok).__name__, 'logits': logits,"
        " 'template': tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False)}))\n"
    )
    import subprocess

    from trainer.backends.autotrain.environment import child_env as _child_env

    done = subprocess.run([str(autotrain_python), "-c", script], capture_output=True, text=True, env=_child_env(autotrain_python), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs["version"] == "4.48.0" and theirs["class"] == "PreTrainedTokenizerFast"
    assert theirs["template"] == "<|im_start|>user\nhi<|im_end|>\n"
    ours = AutoModelForCausalLM.from_pretrained(rope_model_dir, dtype=torch.float32).eval()(torch.tensor(ids)).logits[0, -1]
    assert torch.allclose(ours, torch.tensor(theirs["logits"]), atol=1e-4)


@pytest.mark.integration
@pytest.mark.autotrain
@pytest.mark.slow
def test_autotrain_trains_and_the_result_is_a_trainer_run(tmp_path, rope_model_dir, autotrain_python):
    cfg = _autotrain_config(tmp_path, rope_model_dir, autotrain_python)
    result = run_trainer("--config", str(cfg), timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[autotrain] " in result.stderr and "warning: data.packing" in result.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backend"] == "autotrain" and summary["steps"] >= 1 and summary["train_seconds"] > 0
    assert 0 < summary["final_eval_loss"] < 10  # measured by trainer on the validation set, as the peft backend does
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == list(range(2, summary["steps"] + 1, 2))  # one row per logged step, none twice
    assert any("eval_loss" in r for r in rows)
    for name in ("config.yaml", "README.md", "loss.png", "autotrain/autotrain.yml", "autotrain/autotrain.log"):
        assert (run / name).is_file(), name
    assert "token" not in yaml.safe_load((run / "autotrain/autotrain.yml").read_text())["params"]

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(rope_model_dir)
    model = PeftModel.from_pretrained(base, str(run / "model")).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Ingredients of pancakes?"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8 or out[0, -1].item() in (tokenizer.eos_token_id, tokenizer.pad_token_id)
    trained = {k for k, v in model.named_parameters() if "lora_B" in k and v.abs().sum() > 0}
    assert trained, "the adapter AutoTrain trained is all zeros"

    answered = run_trainer("generate", "--run", str(run), "--prompt", "Ingredients of pancakes?", "--max-new-tokens", "5")
    assert answered.returncode == 0, answered.stderr[-2000:]


# What TRL 0.13 (AutoTrain's) makes of the rows trainer wrote: its DPO tokenize_row, and its ORPO tokenize_row on a
# trainer object made without __init__ (the method reads only the settings set here).
TRL_TOKENIZE = """
import json, sys
from transformers import AutoTokenizer
from trl import DPOTrainer, ORPOTrainer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
orpo = ORPOTrainer.__new__(ORPOTrainer)
orpo.processing_class, orpo.is_encoder_decoder, orpo.truncation_mode, orpo.label_pad_token_id = tok, False, "keep_end", -100
orpo.max_length, orpo.max_prompt_length = 512, 256
for line in open(sys.argv[2]):
    row = json.loads(line)
    dpo = DPOTrainer.tokenize_row(row, tok, max_prompt_length=512, max_completion_length=None, add_special_tokens=False)
    o = orpo.tokenize_row(row)
    print(json.dumps({"dpo": dpo, "orpo": {k: o[k] for k in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")}}))
"""


@pytest.mark.integration
@pytest.mark.autotrain
@pytest.mark.slow
def test_autotrain_trains_dpo_on_smollm2_as_trainer_would(tmp_path, autotrain_python, smollm2_tokenizer):
    """A short real llm-dpo run on the demo model: the run directory, the adapter, and TRL's tokens of the pairs."""
    import subprocess

    from trainer.backends.autotrain.environment import child_env
    from trainer.data.pipeline import prepare_data
    from trainer.demo import demo_model_path
    from trainer.generate import load_run

    config = {
        "model": {"name_or_path": str(demo_model_path())},
        # one optimizer step on the two shortest recipes (a DPO step of SmolLM2 takes about a minute on two cores)
        "data": {"train": str(recipe_pairs(tmp_path / "pairs.jsonl", 2, shortest=True)), "max_seq_length": 512, "validation_split": 0},
        "training": {"objective": "dpo", "epochs": 1, "batch_size": 2, "gradient_accumulation": 1, "learning_rate": 1e-3,
                     "warmup_ratio": 0, "precision": "fp32", "lora": {"r": 4, "alpha": 8, "dropout": 0}},
        "output": {"dir": str(tmp_path / "run")},
        "logging": {"log_every": 1},
        "backend": {"name": "autotrain", "autotrain": {"python": str(autotrain_python)}},  # nothing differs: no allowing
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_trainer("--config", str(path), timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "run"
    assert "Starting DPO training" in (run / "autotrain" / "autotrain.log").read_text()
    document = yaml.safe_load((run / "autotrain" / "autotrain.yml").read_text())
    assert document["task"] == "llm-dpo" and document["params"]["dpo_beta"] == 0.1 and document["data"]["chat_template"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backend"] == "autotrain" and summary["steps"] == 1 and summary["final_eval_loss"] is None  # no validation set
    ours = prepare_data(parse_config(path.read_text(), str(path)), smollm2_tokenizer)
    assert summary["trained_tokens"] == sum(pair.trained for pair in ours.train)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[0]["reward_margin"] == 0 and rows[0]["logps_chosen"] < 0
    assert abs(rows[0]["loss"] - 0.6931) < 1e-3  # DPO starts at log 2: before its first update the policy is the reference
    for name in ("config.yaml", "README.md", "loss.png", "model/adapter_config.json", "model/adapter_model.safetensors"):
        assert (run / name).is_file(), name

    loaded = load_run(run, "cpu")
    trained = [name for name, value in loaded.model.named_parameters() if "lora_B" in name and value.abs().sum() > 0]
    assert trained, "the adapter AutoTrain trained is all zeros"

    done = subprocess.run([str(autotrain_python), "-c", TRL_TOKENIZE, str(run / "autotrain" / "base-model"),
                           str(run / "autotrain" / "data" / "train.jsonl")], capture_output=True, text=True,
                          env=child_env(autotrain_python), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(theirs) == len(ours.train) == 2
    for trl, pair in zip(theirs, ours.train):
        for side, tokenized in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            trained = [t for t, label in zip(tokenized.input_ids, tokenized.labels) if label != -100]
            dpo = trl["dpo"]["prompt_input_ids"] + trl["dpo"][f"{side}_input_ids"]
            assert dpo == list(tokenized.input_ids[: len(dpo)]) and trl["dpo"][f"{side}_input_ids"] == trained
            orpo = trl["orpo"]
            assert orpo[f"{side}_input_ids"] == dpo and [t for t in orpo[f"{side}_labels"] if t != -100] == trained


@pytest.mark.integration
@pytest.mark.autotrain
@pytest.mark.slow
def test_a_failure_autotrain_only_logs_fails_the_run(tmp_path, rope_model_dir, autotrain_python):
    """AutoTrain's @monitor logs an exception in training and exits 0; trainer must not report success."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in rope_model_dir.iterdir():
        if item.name != "model.safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    cfg = _autotrain_config(tmp_path, broken, autotrain_python)
    result = run_trainer("--config", str(cfg), timeout=900)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "AutoTrain reported a failure (and exited 0)" in result.stderr
    assert not (tmp_path / "run" / "model").exists()


def _processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is `folder` (AutoTrain and everything it started run there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == folder:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.integration
@pytest.mark.autotrain
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_stopping_trainer_stops_autotrain_and_everything_it_started(tmp_path, rope_model_dir, autotrain_python, sig):
    import signal
    import subprocess
    import sys
    import time

    cfg = _autotrain_config(tmp_path, rope_model_dir, autotrain_python, **{"training.epochs": 500})
    # SIGINT as a terminal's Ctrl-C delivers it: a test run started in the background (`make test &`) inherits it
    # ignored, and Python then leaves it ignored
    child = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(cfg)], cwd=REPO, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    work = (tmp_path / "run" / "autotrain").resolve()
    seen = []
    for line in child.stderr:
        seen.append(line)
        if "Starting to train" in line:
            break
    assert _processes_in(work), "AutoTrain's training process should be running in " + str(work)
    child.send_signal(getattr(signal, sig))
    _, rest = child.communicate(timeout=60)
    assert child.returncode == EXIT_STOPPED, "".join(seen)[-2000:] + rest[-2000:]
    assert "AutoTrain and its training processes were ended" in rest
    deadline = time.time() + 10
    while _processes_in(work) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_in(work) == []


def test_validate_refuses_what_the_run_would_refuse(tmp_path, cli):
    """`trainer validate` says what `trainer --config` would refuse before loading anything: AutoTrain's differences."""
    cfg = tmp_path / "x.yaml"
    cfg.write_text(f"model: {{name_or_path: {tmp_path}}}\ndata: {{train: {REPO}/data/recipes/train.jsonl}}\n"
                   "training: {method: dora, epochs: 1}\nbackend: {name: autotrain}\n")
    result = cli("validate", "--config", str(cfg))
    assert result.returncode == 2 and "training.method" in result.stderr and "allow_differences: true" in result.stderr
    allowed = cli("validate", "--config", str(cfg), "--set", "backend.autotrain.allow_differences=true")
    assert allowed.returncode == 0, allowed.stderr
