"""What `trainer export --to ollama` writes besides the TEMPLATE (tests/test_ollama_template.py) and the GGUF
(tests/test_export.py), on copies of the tiny trained run, without llama.cpp: the SYSTEM line whichever folder the
export runs in, and the name the model gets."""
import json
import shutil

import yaml

from trainer.config import load_config
from trainer.export.gguf import run_name
from trainer.export.ollama import run_system_prompt

SYSTEM = "You name colours."


def copy_run(trained_run, to, summary: dict | None = None, **output):
    """The run's config.yaml (output.* changed as given) and summary.json (`summary` instead, where given) in `to`."""
    to.mkdir(parents=True)
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    config["output"].update(output)
    (to / "config.yaml").write_text(yaml.safe_dump(config))
    (to / "summary.json").write_text(json.dumps(summary if summary is not None else json.loads((trained_run / "summary.json").read_text())))
    return to


def system_prompt(run):
    said = []
    return run_system_prompt(run, load_config(str(run / "config.yaml"), check_files=False), said.append), said


def test_the_system_prompt_the_run_recorded_is_used_wherever_the_export_runs(trained_run, tmp_path, monkeypatch):
    summary = {**json.loads((trained_run / "summary.json").read_text()), "common_system_prompt": SYSTEM}
    run = copy_run(trained_run, tmp_path / "project" / "runs" / "colours", summary)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "data": {**config["data"], "train": "gone/train.jsonl"}}))
    monkeypatch.chdir(tmp_path)
    assert system_prompt(run) == (SYSTEM, [])
    (run / "summary.json").write_text(json.dumps({**summary, "common_system_prompt": None}))  # recorded: none in common
    assert system_prompt(run) == (None, [])


def test_a_run_trained_before_it_was_recorded_reads_its_data_from_where_it_was_trained(trained_run, tmp_path, monkeypatch):
    """An older summary.json has no common_system_prompt: the data is read again, a relative data.train from the
    folder that output.dir says training ran in; where it is not found, a warning names it instead of SYSTEM
    silently missing (what happened before: `trainer export` from any other folder dropped the line)."""
    older = {k: v for k, v in json.loads((trained_run / "summary.json").read_text()).items() if k != "common_system_prompt"}
    project = tmp_path / "project"
    run = copy_run(trained_run, project / "runs" / "colours", older, dir="runs/colours")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "data": {**config["data"], "train": "data/train.jsonl"}}))
    (project / "data").mkdir()
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("red", "blue")]
    (project / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert system_prompt(run) == (SYSTEM, [])

    moved = tmp_path / "moved" / "colours"
    shutil.copytree(run, moved)  # output.dir no longer says where training ran
    found, said = system_prompt(moved)
    assert found is None and len(said) == 1
    assert said[0].startswith("warning: could not read the run's training data (data/train.jsonl")
    assert str(tmp_path / "elsewhere" / "data" / "train.jsonl") in said[0] and "the Modelfile has no SYSTEM line" in said[0]
    monkeypatch.chdir(project)  # exported from the folder it was trained in: found again
    assert system_prompt(moved) == (SYSTEM, [])


def test_the_model_is_named_after_the_run_not_its_folder(trained_run, tmp_path):
    """The Hub repository's name, else output.dir's, else the folder's, in the characters Ollama allows."""
    assert run_name(copy_run(trained_run, tmp_path / "a" / "run", dir="runs/recipes v2")) == "recipes-v2"
    hub = {"repo_id": "me/smollm2-recipes", "private": True}
    assert run_name(copy_run(trained_run, tmp_path / "b" / "run", dir="runs/recipes", push_to_hub=hub)) == "smollm2-recipes"
    assert run_name(copy_run(trained_run, tmp_path / "c" / "colours", dir=".")) == "colours"
    (tmp_path / "d" / "my run").mkdir(parents=True)
    (tmp_path / "d" / "my run" / "config.yaml").write_text("not: [a config")
    assert run_name(tmp_path / "d" / "my run") == "my-run"


def test_preference_pairs_share_a_system_prompt_too(in_repo):
    """A dpo run's examples are Pairs (the Ollama export raised AttributeError on them): counted by their chosen side."""
    from trainer.data.pipeline import load_examples
    from trainer.rundir import common_system_prompt

    config = load_config("configs/recipes-dpo.yaml", check_files=False)
    assert common_system_prompt(load_examples(config.data.train, config)[0]).startswith("You are a helpful recipe assistant.")
