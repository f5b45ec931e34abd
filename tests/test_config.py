"""The validator from the user's side: a minimal valid config plus one change each, and what comes out."""
import dataclasses

import jsonschema
import pytest

from conftest import MINIMAL, REPO
from trainer.config import Config, load_config, parse_config
from trainer.config.model import SECTION_CLASSES
from trainer.config.schema import load_schema, sections
from trainer.errors import UserError

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def with_changes(text: str = MINIMAL, **sections_text: str) -> str:
    return text + "".join(f"{name}:\n{body}" for name, body in sections_text.items())


def test_minimal_config_gets_every_default(in_repo):
    cfg = parse_config(MINIMAL)
    assert isinstance(cfg, Config)
    assert cfg.training.method == "lora"
    assert cfg.training.lora.r == 16
    assert cfg.training.lora.target_modules == "all-linear"
    assert cfg.training.learning_rate == 2e-4
    assert cfg.data.train_on == "assistant"
    assert cfg.data.max_seq_length == 1024
    assert cfg.training.early_stopping is None
    assert cfg.output.push_to_hub is None
    assert cfg.backend.name == "peft" and cfg.backend.peft.device == "auto"
    assert cfg.evaluation.metrics == ("loss", "exact_match", "token_f1", "rouge_l")


def test_config_is_frozen_and_typed(in_repo):
    cfg = parse_config(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.epochs = 5
    assert isinstance(cfg.training.epochs, float)  # schema type number
    assert isinstance(cfg.training.batch_size, int)
    assert not isinstance(cfg.training, dict)


def test_every_schema_section_has_a_class_with_its_fields():
    schema = load_schema()
    for path, section in sections(schema):
        fields = {f.name for f in dataclasses.fields(SECTION_CLASSES[path]) if f.compare}
        assert fields == set(section["properties"]), path


def test_schema_is_valid_draft_2020_12_and_documents_every_field():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node, path):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} must refuse unknown keys"
            for name, sub in node["properties"].items():
                assert sub.get("title") and sub.get("description"), f"{path}.{name} needs a title and a description"
                walk(sub, f"{path}.{name}")

    walk(schema, "")


def test_number_written_as_yaml_text_is_read_as_number(in_repo):
    # YAML 1.1 reads 2e-4 (no dot) as a string; users mean the number.
    cfg = parse_config(MINIMAL + "  learning_rate: 2e-4\n  batch_size: '8'\n")
    assert cfg.training.learning_rate == 2e-4
    assert cfg.training.batch_size == 8


def test_target_modules_list_becomes_a_tuple(in_repo):
    cfg = parse_config(MINIMAL + "  lora:\n    target_modules: [q_proj, v_proj]\n")
    assert cfg.training.lora.target_modules == ("q_proj", "v_proj")


def test_early_stopping_block_gets_its_defaults(in_repo):
    cfg = parse_config(MINIMAL + "  early_stopping: {patience: 5}\n")
    assert cfg.training.early_stopping.patience == 5
    assert cfg.training.early_stopping.min_delta == 0.0


def test_all_problems_reported_together(in_repo):
    text = MINIMAL + "  batch_size: 0\n  epochs: 2\n  optimiser: adamw\n"
    with pytest.raises(UserError) as info:
        parse_config(text, "x.yaml")
    messages = [str(p) for p in info.value.problems]
    assert len(messages) == 3
    assert any("x.yaml:7:15: training.batch_size: 0 is out of range" in m for m in messages)
    assert any("appears twice (lines 6 and 8)" in m for m in messages)
    assert any("Did you mean `optimizer`?" in m for m in messages)


@pytest.mark.parametrize(
    "key, expected",
    [
        ("learnig_rate", "learning_rate"),
        ("learning-rate", "learning_rate"),
        ("batchsize", "batch_size"),
        ("gradient_acumulation", "gradient_accumulation"),
        ("warmup", "warmup_ratio"),
        ("max_step", "max_steps"),
    ],
)
def test_did_you_mean(in_repo, key, expected):
    with pytest.raises(UserError, match=rf"unknown key `{key}` under `training`. Did you mean `{expected}`\?"):
        parse_config(MINIMAL + f"  {key}: 1\n")


def test_env_expansion_with_default_and_from_environment(in_repo, monkeypatch):
    monkeypatch.setenv("TRAINER_TEST_DIR", "runs/from-env")
    cfg = parse_config(MINIMAL + "  batch_size: ${TRAINER_TEST_BS:-6}\noutput:\n  dir: ${TRAINER_TEST_DIR}\n")
    assert cfg.training.batch_size == 6
    assert cfg.output.dir == "runs/from-env"


def test_env_values_are_never_echoed(in_repo, monkeypatch):
    monkeypatch.setenv("TRAINER_TEST_SECRET", "s3cr3t-canary")
    text = MINIMAL + "output:\n  dir: ${TRAINER_TEST_SECRET}\n  push_to_hub:\n    repo_id: ${TRAINER_TEST_SECRET}\n"
    monkeypatch.setenv("HF_TOKEN", "hf_canary")
    with pytest.raises(UserError) as info:
        parse_config(text)  # repo_id has no slash: invalid
    assert "s3cr3t-canary" not in info.value.render()
    assert "the value from ${TRAINER_TEST_SECRET}" in info.value.render()
    monkeypatch.setenv("TRAINER_TEST_SECRET", "me/model")
    cfg = parse_config(text)
    assert cfg.output.dir == "me/model"
    written = cfg.to_yaml()
    assert "me/model" not in written and "${TRAINER_TEST_SECRET}" in written
    assert "hf_canary" not in written


def test_escaped_dollar_is_literal(in_repo):
    cfg = parse_config(MINIMAL + "output:\n  dir: runs/$${NOT_A_VAR}\n")
    assert cfg.output.dir == "runs/${NOT_A_VAR}"


def test_merge_keys_and_aliases_work(in_repo):
    text = MINIMAL + "  lora: &base {r: 8, alpha: 16}\nevaluation:\n  <<: {few_shot: 2}\n  max_new_tokens: 64\n"
    cfg = parse_config(text)
    assert cfg.training.lora.r == 8
    assert cfg.evaluation.few_shot == 2


def test_overrides_apply_and_point_at_the_command_line(in_repo):
    cfg = parse_config(MINIMAL, overrides=["training.max_steps=5", "training.epochs=null"])
    assert cfg.training.max_steps == 5 and cfg.training.epochs is None
    with pytest.raises(UserError, match=r"--set: training.batch_size: -1 is out of range"):
        parse_config(MINIMAL, overrides=["training.batch_size=-1"])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_validates_and_round_trips(in_repo, path, tmp_path):
    # a config that starts from another run's adapter (recipes-dpo: the quickstart's, which `make demo` trains)
    # is checked with a stand-in folder there; every other file it names must exist
    starts_from_a_run = "\n  adapter: runs/" in path.read_text()
    cfg = load_config(str(path), [f"model.adapter={tmp_path}"] if starts_from_a_run else [])
    again = parse_config(cfg.to_yaml(), "roundtrip.yaml")
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()


def test_round_trip_keeps_env_references(in_repo):
    cfg = load_config("configs/quickstart.yaml")
    assert "${TRAINER_CACHE:-~/.cache/trainer}/models/SmolLM2-135M-Instruct.Q4_1.gguf" in cfg.to_yaml()
    assert cfg.model.name_or_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_grpo_settings_are_typed_and_grpo_is_refused_where_it_cannot_run(in_repo):
    from trainer.config.rules import check_config

    text = MINIMAL + ("  objective: grpo\n  grpo: {num_generations: 4, beta: 0.04, epsilon_high: 0.28, loss_type: dr_grpo, "
                      "scale_rewards: none, num_iterations: 2, graders: [{type: builtin, name: f1, metric: json_list_f1, "
                      "reference: '{{ item.answer }}'}]}\n")
    typed = parse_config(text, "x.yaml").training.grpo
    assert (typed.num_iterations, typed.loss_type, typed.graders[0]["metric"]) == (2, "dr_grpo", "json_list_f1")
    cfg = parse_config(MINIMAL)
    grpo = cfg.training.grpo.replace(num_generations=4, beta=0.04, epsilon_high=0.28, loss_type="dr_grpo")
    assert (grpo.num_generations, grpo.temperature, grpo.epsilon, grpo.scale_rewards) == (4, 1.0, 0.2, "group")
    packed = cfg.replace(training=cfg.training.replace(objective="grpo", grpo=grpo), data=cfg.data.replace(packing=True))
    found = dict(check_config(packed, check_files=False))
    assert found[("data", "packing")].startswith("grpo samples its own answers to one prompt per row")
    assert dict(check_config(packed.replace(backend=packed.backend.replace(name="autotrain")), check_files=False))[
        ("training", "objective")].startswith("AutoTrain has no GRPO")
    assert check_config(cfg.replace(training=cfg.training.replace(grpo=cfg.training.grpo.replace())), check_files=False) == []  # defaults: fine under sft
