"""The command line as a user meets it."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from trainer import __version__
from trainer.config.presets import PRESETS


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"trainer {__version__}"


def test_help_everywhere(cli):
    for args in ([], ["validate"], ["init"], ["schema"], ["convert"], ["download-demo-model"]):
        result = cli(*args, "--help")
        assert result.returncode == 0, args
        assert "usage: trainer" in result.stdout


def test_no_arguments_prints_help_and_exits_2(cli):
    result = cli()
    assert result.returncode == 2 and "usage: trainer" in result.stdout


def test_schema_prints_the_json_schema(cli):
    result = cli("schema")
    schema = json.loads(result.stdout)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "training" in schema["properties"]


def test_validate_print_gives_normalised_yaml(cli):
    result = cli("validate", "--config", "configs/quickstart.yaml", "--print")
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert data["training"]["scheduler"] == "cosine"  # a default, filled in
    assert data["model"]["name_or_path"].startswith("${TRAINER_CACHE")


@pytest.mark.integration  # a fresh interpreter: what the test is about
def test_validate_does_not_import_torch_or_transformers():
    code = (
        "import sys; from trainer.cli import main; rc = main(['validate', '--config', 'configs/quickstart.yaml']);"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules];"
        "print(heavy); sys.exit(rc or bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("[]")


def test_init_writes_each_preset_and_it_validates(tmp_path, cli):
    for preset in PRESETS:
        out = tmp_path / f"{preset}.yaml"
        result = cli("init", "--preset", preset, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert out.read_text().lstrip().startswith("#")  # commented for a newcomer
        check = cli("validate", "--config", str(out))
        assert check.returncode == 0, check.stderr


def test_init_refuses_to_overwrite(tmp_path, cli):
    out = tmp_path / "x.yaml"
    out.write_text("keep me")
    result = cli("init", "-o", str(out))
    assert result.returncode == 2 and "already exists" in result.stderr
    assert out.read_text() == "keep me"


def test_qlora_is_refused_up_front_on_a_machine_without_cuda(tmp_path, cli):
    # This machine (and CI) has no GPU: the run must stop before any model loading, naming the key.
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this check is about machines without CUDA")
    result = cli("--config", "configs/llama3.1-8b-qlora-gpu.yaml")
    assert result.returncode == 2
    assert "training.method: qlora requires an NVIDIA GPU (CUDA), and this run would use cpu" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_subcommand_of_the_parser_has_a_handler():
    from trainer.cli import COMMANDS, build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert list(subparsers.choices) == [c.name for c in COMMANDS]
