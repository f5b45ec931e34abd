"""The web UI: the schema-driven form, the sandbox, the API (gradio_client) and a real browser (Chromium)."""
import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import REPO

gr = pytest.importorskip("gradio", reason="the ui extra is installed by make test")

from trainer.config import parse_config  # noqa: E402
from trainer.config.presets import PRESETS, preset_text  # noqa: E402
from trainer.config.schema import load_schema  # noqa: E402
from ui.form import fields, from_config, to_document  # noqa: E402
from ui.workspace import Workspace  # noqa: E402

ARTIFACTS = REPO / "test-artifacts" / "ui"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_round_trips_through_the_form(preset):
    specs = fields(load_schema())
    config = parse_config(preset_text(preset), check_files=False)
    values = from_config(specs, config.to_dict())
    again = parse_config(yaml.safe_dump(to_document(specs, values)), check_files=False)
    assert again.to_dict() == config.to_dict()
    assert from_config(specs, again.to_dict()) == values


def test_a_new_schema_field_appears_in_the_form_without_ui_changes(tmp_path):
    from ui.app import App, build

    schema = copy.deepcopy(load_schema())
    schema["properties"]["training"]["properties"]["label_smoothing"] = {
        "title": "Label smoothing", "description": "A setting the UI code has never heard of.",
        "type": "number", "minimum": 0, "maximum": 1, "default": 0.0}
    app = App(Workspace(tmp_path, sandbox=False), schema=schema)
    spec = next(s for s in app.specs if s.key == "training.label_smoothing")
    assert spec.group == "Training" and spec.kind == "number" and spec.maximum == 1
    demo = build(app)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert "field-training-label_smoothing" in ids
    by_id = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    slider = by_id["field-training-label_smoothing"]  # a bounded share: a slider over the schema's bounds
    assert isinstance(slider, gr.Slider) and (slider.minimum, slider.maximum) == (0, 1)
    split = by_id["field-data-validation_split"]
    assert isinstance(split, gr.Slider) and split.maximum == 0.5
    assert isinstance(by_id["field-training-learning_rate"], gr.Number)  # above 0: the validator explains, inline
    values = [0.1 if s.key == "training.label_smoothing" else None for s in app.specs]
    assert to_document(app.specs, values) == {"training": {"label_smoothing": 0.1}}


def test_the_plan_panel_follows_the_config(tmp_path, tiny_model_dir):
    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=False))
    data = _tiny_chat_data(tmp_path)
    assert "appears once the config is valid" in app.plan(None)
    four = app.plan(tiny_run_yaml(tiny_model_dir, str(data)))
    two = app.plan(tiny_run_yaml(tiny_model_dir, str(data)).replace("batch_size: 4", "batch_size: 2"))
    assert "Parameters:" in four and "micro-batch 4 x" in four and "micro-batch 2 x" in two


def test_every_schema_setting_has_exactly_one_field():
    specs = fields(load_schema())
    keys = [s.key for s in specs if s.kind != "toggle"]
    assert len(keys) == len(set(keys))
    assert {"model.name_or_path", "training.lora.target_modules", "evaluation.metrics", "training.early_stopping.patience"} <= set(keys)
    assert {s.group for s in specs} == {"Model", "Data", "Training", "Output", "Backend", "Evaluation"}


def test_errors_are_reported_at_their_field(tmp_path):
    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=False))
    values = app.preset_values("cpu-demo")
    index = next(i for i, s in enumerate(app.specs) if s.key == "training.learning_rate")
    values[index] = -1
    _, problems, runnable = app.check(values)
    assert runnable is None
    assert "must be greater than 0" in problems["training.learning_rate"]


def test_preference_data_is_previewed_as_pairs(tmp_path):
    from ui.app import App

    rows = [{"input": {"messages": [{"role": "user", "content": "say red"}]}, "preferred_output": [{"role": "assistant", "content": "red"}],
             "non_preferred_output": [{"role": "assistant", "content": "blue"}]},
            {"prompt": "say red", "chosen": "red", "rejected": "red"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shown, detection, _, needed = App(Workspace(tmp_path, sandbox=False)).inspect_data(str(tmp_path / "pairs.jsonl"))
    assert "preference pairs (openai layout)" in detection and "objective dpo or orpo" in detection
    assert (shown[0]["prompt"], shown[0]["chosen"], shown[0]["rejected"]) == ("user: say red", "assistant: red", "assistant: blue")
    assert "identical" in shown[1]["prompt"] and {"chosen", "rejected"} <= needed


@pytest.mark.parametrize("typed", ["../../etc/passwd", "/etc/passwd", "~/.ssh/id_rsa", "uploads/../../x.jsonl"])
def test_the_sandbox_refuses_paths_outside_the_work_directory(tmp_path, typed):
    workspace = Workspace(tmp_path, sandbox=True)
    resolved, why = workspace.resolve(typed, "data")
    assert resolved is None and "work directory" in why


def test_the_sandbox_accepts_its_own_files_and_hub_ids(tmp_path):
    workspace = Workspace(tmp_path, sandbox=True)
    assert workspace.resolve("uploads/train.jsonl", "data") == (str(tmp_path / "uploads" / "train.jsonl"), None)
    assert workspace.resolve("HuggingFaceH4/no_robots:train", "data") == ("HuggingFaceH4/no_robots:train", None)
    assert workspace.resolve("/opt/venv/bin/python", "program")[0] is None


def test_uploads_are_kept_under_the_work_directory_with_a_limit(tmp_path):
    workspace = Workspace(tmp_path / "work", sandbox=True, max_upload_mb=0.001)
    (tmp_path / "work").mkdir()
    small = tmp_path / "../small.jsonl"
    small.write_text('{"text": "hi"}\n')
    saved = workspace.save_upload(str(small), "../../evil name.jsonl")
    assert saved.parent.parent == tmp_path / "work" / "uploads" and saved.name == "evil_name.jsonl"
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "bye"}\n')
    assert workspace.save_upload(str(other), "evil name.jsonl") != saved  # same name, other content: both kept
    assert workspace.save_upload(str(small), "evil name.jsonl") == saved
    big = tmp_path / "big.jsonl"
    big.write_text("x" * 5000)
    with pytest.raises(ValueError, match="limit"):
        workspace.save_upload(str(big))
    with pytest.raises(ValueError, match="upload a"):
        workspace.save_upload(str(small), "script.sh")


def test_the_data_preview_shows_each_conversation_and_a_shared_system_prompt_once(tmp_path):
    from ui.app import App

    rows, detection, _, _ = App(Workspace(tmp_path, sandbox=False)).inspect_data(str(REPO / "data" / "recipes" / "train.jsonl"))
    assert "every example shown has the same system prompt: 'You are a helpful recipe assistant." in detection
    assert all(row["conversation"].startswith("user: ") and "\nassistant: " in row["conversation"] for row in rows)
    different = tmp_path / "mixed.jsonl"
    different.write_text("".join(json.dumps({"messages": [{"role": "system", "content": s}, {"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "ok"}]}) + "\n" for s in ("A", "B")))
    rows, detection, _, _ = App(Workspace(tmp_path, sandbox=False)).inspect_data(str(different))
    assert "system prompt" not in detection and rows[1]["conversation"].startswith("system: B")


def test_the_yaml_preview_shows_what_differs_from_the_defaults(tmp_path):
    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=False))
    preview, _, _ = app.check(app.preset_values("cpu-demo"))
    short = yaml.safe_load(app.short_yaml(preview))
    assert short["training"]["learning_rate"] == 0.002 and short["model"]["name_or_path"] and short["data"]["train"]
    assert "scheduler" not in short["training"] and "backend" not in short and len(app.short_yaml(preview).splitlines()) < 30
    assert parse_config(app.short_yaml(preview), check_files=False).to_dict() == parse_config(preview, check_files=False).to_dict()


def test_the_loss_chart_has_whole_steps_and_shows_a_single_validation_point():
    import matplotlib.pyplot as plt

    from trainer.rundir import loss_figure

    fig = loss_figure(([1, 2], [4.7, 4.6]), ([2], [4.5]))  # two steps: a default axis would mark 1.0, 1.2, ... 2.0
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())  # no "step 1.05"
    validation = [line for line in ax.get_lines() if line.get_label() == "validation loss"]
    assert len(validation) == 1 and validation[0].get_marker() == "o" and list(validation[0].get_xdata()) == [2]
    plt.close(fig)


def test_a_grpo_jobs_rewards_are_drawn_below_its_loss(tmp_path):
    """The Run tab of a grpo run: its mean reward, in all and per grader, per logged step (the spreads are not curves)."""
    import matplotlib.pyplot as plt

    from trainer.rundir import loss_figure
    from ui.app import App
    from ui.jobs import Job

    app = App(Workspace(tmp_path, sandbox=False))
    (app.jobs.root / "j1").mkdir()
    app.jobs._save(Job("j1", "train", "c.yaml", "run", status="finished", created=1.0))
    (tmp_path / "run").mkdir()
    rows = [{"step": s, "loss": 0.1, "total_steps": 2, "reward": r, "reward_std": 0.2, "reward_exact": r / 2, "reward_exact_std": 0.1}
            for s, r in ((1, 0.25), (2, 0.5))]
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    view = app.job_view("j1")
    assert [(r["series"], r["step"], r["reward"]) for r in view["rewards"]] == [
        ("reward", 1, 0.25), ("reward_exact", 1, 0.125), ("reward", 2, 0.5), ("reward_exact", 2, 0.25)]
    fig = loss_figure(([1, 2], [0.1, 0.1]), ([], []), {"reward": ([1, 2], [0.25, 0.5]), "reward_exact": ([1, 2], [0.125, 0.25])})
    assert len(fig.axes) == 2 and [line.get_label() for line in fig.axes[1].get_lines()] == ["reward", "reward_exact"]
    plt.close(fig)


def test_a_data_file_trainer_would_refuse_is_a_problem_of_the_form(tmp_path):
    """30 of 31 lines broken: not "The config is valid" beside a data report listing the problems."""
    from ui.app import App

    broken = tmp_path / "broken.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    broken.write_text(good + "\n" + "".join('{"messages": [{"role": "user", "content": "cut off\n' for _ in range(30)))
    app = App(Workspace(tmp_path, sandbox=False))
    values = app.preset_values("cpu-demo")
    index = {s.key: i for i, s in enumerate(app.specs)}
    values[index["data.train"]], values[index["data.validation"]] = str(broken), ""
    _, problems, runnable = app.check(values)
    assert runnable is None and "30 of 31 records cannot be read (first: " in problems["data.train"]
    assert f"{broken}:2" in problems["data.train"] and "data.on_invalid: skip" in problems["data.train"]
    values[index["data.on_invalid"]] = "skip"  # the user's choice: the form says nothing more than trainer would
    assert "data.train" not in app.check(values)[1]


def test_uploading_training_data_drops_the_presets_validation_file_and_says_so(tmp_path):
    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=False))
    preset = to_document(app.specs, app.preset_values("cpu-demo"))["data"]["validation"]
    kept, note = app.validation_after_upload(preset)
    assert kept == "" and preset in note and "upload a validation file" in note
    assert app.validation_after_upload("uploads/abc/mine.jsonl") == ("uploads/abc/mine.jsonl", "")
    assert app.validation_after_upload(None) == ("", "")


def test_an_autotrain_yaml_fills_the_form(tmp_path):
    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=False))
    source = tmp_path / "autotrain.yml"
    source.write_text("task: llm-sft\nbase_model: org/model\nproject_name: my-run\nlog: none\nbackend: local\n"
                      "data: {path: data, train_split: train, valid_split: null, chat_template: tokenizer, "
                      "column_mapping: {text_column: messages}}\nparams: {lr: 0.0003, epochs: 2, peft: true, quantization: null}\n")
    values = app.load_yaml(str(source))
    document = to_document(app.specs, values)
    assert document["model"]["name_or_path"] == "org/model" and document["training"]["learning_rate"] == 0.0003
    assert document["training"]["method"] == "lora" and document["output"]["dir"] == "my-run"


def test_the_run_download_holds_the_result_not_the_checkpoints(tmp_path):
    import zipfile

    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=True))
    run = tmp_path / "runs" / "r"
    (run / "model").mkdir(parents=True)
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    for name in ("config.yaml", "README.md", "summary.json", "model/adapter_config.json", "checkpoints/step-1/optimizer.pt"):
        (run / name).write_text("x")
    names = set(zipfile.ZipFile(app.archive("runs/r")).namelist())
    assert {"config.yaml", "README.md", "summary.json", "model/adapter_config.json"} <= names
    assert not any(n.startswith("checkpoints") for n in names)
    with pytest.raises(ValueError):
        app.archive("../../etc")


# --- the app started for real on 127.0.0.1 -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_server(tmp_path):
    """`trainer ui` in its own process, with a fresh work directory; yields (url, workdir)."""
    def start(sandbox: bool, auth: str | None = None):
        port = _free_port()
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        # one thread for the UI and its jobs: a tiny model's steps took 190 ms with two threads on busy cores, 7.5 with one
        env = {**os.environ, "TRAINER_WORKDIR": str(workdir), "TRAINER_UI_SANDBOX": "1" if sandbox else "0", "OMP_NUM_THREADS": "1"}
        if auth:
            env["TRAINER_UI_AUTH"] = auth
        process = subprocess.Popen([sys.executable, "-m", "trainer", "ui", "--port", str(port)], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(process)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while time.time() < deadline:  # until the app answers a page (an open port alone was not enough under load)
            try:
                if httpx.get(url, timeout=10).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.5)
        return url, workdir

    started: list = []
    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def tiny_run_yaml(model_dir: Path, data: str, out: str = "runs/tiny") -> str:
    return yaml.safe_dump({
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": data, "validation_split": 0.2, "max_seq_length": 64},
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 0.01, "precision": "fp32"},
        "output": {"dir": out},
        "logging": {"log_every": 1},
    })


def _tiny_chat_data(folder: Path) -> Path:
    path = folder / "tiny.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("red", "blue", "green", "pink", "gold", "grey", "teal", "navy", "ruby", "jade")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.integration
@pytest.mark.slow
def test_api_validates_trains_stops_resumes_and_chats(ui_server, tiny_model_dir, tmp_path):
    from gradio_client import Client

    url, workdir = ui_server(sandbox=False)
    client = Client(url, verbose=False)
    bad = client.predict("model: {name_or_path: x}\ndata: {train: y}\ntraining: {learning_rate: -1}", api_name="/validate_yaml")
    assert bad["valid"] is False and "training.learning_rate" in bad["problems"]

    data = _tiny_chat_data(tmp_path)
    # long enough that Stop lands mid-run (about 7.5 ms a step on one thread: 7.5 s; about 40 ms on the 2-core fp32 CPU
    # of CI), short enough to resume to the end
    job = client.predict(tiny_run_yaml(tiny_model_dir, str(data)).replace("max_steps: 4", "max_steps: 1000"), api_name="/start_yaml")
    deadline = time.time() + 120
    while time.time() < deadline:
        status = client.predict(job, api_name="/job_status")
        if status["progress"]:
            break
        time.sleep(0.5)
    assert client.predict(job, api_name="/stop_job") in ("stopping", "stopped")
    while time.time() < deadline and "stopping" in client.predict(job, api_name="/job_status")["status"]:
        time.sleep(0.5)
    status = client.predict(job, api_name="/job_status")
    assert "stopped" in status["status"], status
    assert list((workdir / "runs" / "tiny" / "checkpoints").glob("step-*")), "Stop must leave a checkpoint"

    assert client.predict(job, api_name="/resume_job") in ("queued", "running")
    deadline = time.time() + 300
    while time.time() < deadline and "finished" not in (status := client.predict(job, api_name="/job_status"))["status"]:
        assert "failed" not in status["status"], status["log"]
        time.sleep(1)
    assert "finished" in status["status"]
    assert "Resuming from" in (workdir / "jobs" / job / "log.txt").read_text()
    assert status["losses"] and status["progress"].startswith("step 1000 of 1000")
    answer = client.predict("runs/tiny", "say red", 4, api_name="/chat_once")
    assert isinstance(answer, str)
    # another browser session (a closed and reopened page) sees the same job
    assert Client(url, verbose=False).predict("", api_name="/job_status")["job"] == job


@pytest.mark.integration
@pytest.mark.slow
def test_api_with_login_in_the_sandbox_refuses_outside_paths(ui_server):
    from gradio_client import Client

    url, _ = ui_server(sandbox=True, auth="ada:s3cret-pass")
    with pytest.raises(Exception):
        Client(url, verbose=False)  # no login, no access
    client = Client(url, auth=("ada", "s3cret-pass"), verbose=False)
    result = client.predict("model: {name_or_path: /etc}\ndata: {train: ../../etc/passwd}\ntraining: {epochs: 1}\n", api_name="/validate_yaml")
    assert result["valid"] is False
    assert "work directory" in result["problems"]["data.train"] and "work directory" in result["problems"]["model.name_or_path"]


# --- a real browser ------------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.slow
def test_in_a_browser_from_preset_to_chat(ui_server, tiny_model_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: make test installs Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    url, workdir = ui_server(sandbox=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    step = iter(range(1, 100))

    def shot(page, name):
        page.screenshot(path=str(ARTIFACTS / f"{next(step):02d}-{name}.png"), full_page=True)

    def set_field(page, key, value):
        box = page.locator(f"#field-{key.replace('.', '-')} input, #field-{key.replace('.', '-')} textarea").first
        box.fill(str(value))
        box.press("Tab")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(url)
        expect(page.locator("#form-status")).to_contain_text("valid", timeout=60_000)
        shot(page, "loaded")

        page.locator("#preset input").click()
        page.get_by_role("option", name="CPU demo (SmolLM2-135M, LoRA)").click()
        expect(page.locator("#yaml-preview")).to_contain_text("learning_rate: 0.002", timeout=30_000)
        shot(page, "preset")
        # the plan beside the form: SmolLM2's LoRA parameters, as many as the training log counts
        expect(page.locator("#plan")).to_contain_text("4,884,480 trainable", timeout=180_000)
        expect(page.locator("#plan")).to_contain_text("micro-batch 8 x")
        # the plan wraps (it was cut at the right edge), and Run is a tab at the top (its buttons sat 2,700 px down)
        assert page.eval_on_selector("#plan pre", "e => e.scrollWidth <= e.clientWidth + 1")
        assert page.get_by_role("tab", name="Run").bounding_box()["y"] < 300
        shot(page, "plan")

        page.get_by_role("tab", name="Data").click()
        page.locator("#upload-data input[type=file]").set_input_files(str(REPO / "data" / "recipes" / "train.jsonl"))
        expect(page.locator("#data-detected")).to_contain_text("messages", timeout=30_000)
        expect(page.locator("#data-preview")).to_contain_text("ingredients", timeout=30_000)
        expect(page.locator("#yaml-preview")).to_contain_text("/train.jsonl", timeout=30_000)
        expect(page.locator("#yaml-preview")).to_contain_text("uploads/", timeout=30_000)
        # the preset's validation file belongs to the preset's data: it goes, and the page says so
        expect(page.locator("#data-detected")).to_contain_text("validation file data/recipes/validation.jsonl was removed")
        expect(page.locator("#yaml-preview")).not_to_contain_text("data/recipes/validation.jsonl")
        shot(page, "data-preview")
        page.locator("#upload-validation input[type=file]").set_input_files(str(REPO / "data" / "recipes" / "validation.jsonl"))
        expect(page.locator("#data-detected")).to_contain_text("Validation data", timeout=30_000)
        expect(page.locator("#yaml-preview")).to_contain_text("/validation.jsonl", timeout=30_000)
        assert "uploads/" in _preview(page)["data"]["validation"]
        shot(page, "validation-uploaded")
        page.locator("#check-data").click()
        expect(page.locator("#data-report textarea")).to_have_value(__import__("re").compile("tokens"), timeout=120_000)
        shot(page, "data-report")

        page.get_by_role("tab", name="Training").click()
        set_field(page, "training.learning_rate", "-1")
        expect(page.locator("#field-training-learning_rate")).to_contain_text("must be greater than 0", timeout=30_000)
        expect(page.locator("#form-status")).to_contain_text("Fix these", timeout=30_000)
        shot(page, "inline-error")
        set_field(page, "training.learning_rate", "0.01")
        expect(page.locator("#form-status")).to_contain_text("valid", timeout=30_000)
        expect(page.locator("#field-training-learning_rate")).not_to_contain_text("must be greater than 0")
        shot(page, "fixed")

        with page.expect_download() as download:
            page.locator("#download-yaml").click()
        saved = tmp_path / "downloaded.yaml"
        download.value.save_as(saved)
        downloaded = parse_config(saved.read_text(), str(saved), check_files=False)
        assert downloaded.training.learning_rate == 0.01

        # a tiny run through the form: the tiny model, short answers, a few steps
        page.get_by_role("tab", name="Model").click()
        set_field(page, "model.name_or_path", str(tiny_model_dir))
        page.get_by_role("tab", name="Data").click()
        set_field(page, "data.train", str(_tiny_chat_data(workdir)))
        set_field(page, "data.max_seq_length", "64")
        page.get_by_role("tab", name="Training").click()
        set_field(page, "training.epochs", "")
        set_field(page, "training.max_steps", "6")
        set_field(page, "training.batch_size", "4")
        page.get_by_role("tab", name="Output").click()
        page.locator("#tab-output").get_by_text("Advanced").click()
        set_field(page, "logging.log_every", "1")
        page.get_by_role("tab", name="Evaluation").click()
        page.locator("#field-evaluation-after_training input").uncheck()
        expect(page.locator("#form-status")).to_contain_text("valid", timeout=30_000)
        expect(page.locator("#yaml-preview")).to_contain_text("max_steps: 6", timeout=30_000)
        shot(page, "tiny-run-form")
        # the plan beside the form follows it: now the tiny model at the batch just typed
        expect(page.locator("#plan")).to_contain_text("micro-batch 4 x", timeout=120_000)
        expect(page.locator("#plan")).to_contain_text("(llama, 2 layers)", timeout=30_000)
        shot(page, "plan-follows-the-form")

        page.get_by_role("tab", name="Run").click()
        page.locator("#start").click()
        expect(page.locator("#job-status")).to_contain_text("finished", timeout=180_000)
        expect(page.locator("#job-progress")).to_contain_text("step 6 of 6")
        expect(page.locator("#loss-curve img, #loss-curve canvas, #loss-curve svg").first).to_be_visible(timeout=30_000)
        shot(page, "finished-with-loss-curve")

        page.get_by_role("tab", name="Results").click()
        page.locator("#refresh-runs").click()
        # an evaluation report's table of numbers, in a fixed-width font (it was proportional: columns did not line up)
        (workdir / "runs" / "quickstart" / "eval.md").write_text("| system | token_f1 |\n|---|---|\n| tuned | 0.512 |\n")
        page.locator("#run-choice input").fill("runs/quickstart")
        page.locator("#run-choice input").press("Enter")
        expect(page.locator("#report td").first).to_have_text("tuned", timeout=30_000)
        assert "monospace" in page.eval_on_selector("#report td", "e => getComputedStyle(e).fontFamily")
        page.locator("#chat-input textarea").fill("say red")
        page.locator("#chat-input textarea").press("Enter")
        expect(page.locator("#chatbot")).to_contain_text("say red", timeout=60_000)
        expect(page.locator("#chatbot [data-testid=bot], #chatbot .bot").first).to_be_attached(timeout=60_000)
        page.wait_for_timeout(2000)
        rows = [json.loads(l) for l in (workdir / "runs" / "quickstart" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
        shot(page, "chat")
        browser.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.integration
@pytest.mark.slow
def test_under_load_twenty_clients_and_a_running_job(ui_server, tiny_model_dir, tmp_path):
    """20 clients validating and uploading at once while a job trains: no error, the job's losses are those of
    the same run alone, the UI's memory stays bounded, and a second start waits in the queue."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    reference = tmp_path / "reference"
    reference.mkdir()
    data = _tiny_chat_data(tmp_path)
    config_text = tiny_run_yaml(tiny_model_dir, str(data), out=str(reference / "run")).replace("max_steps: 4", "max_steps: 60")
    (reference / "c.yaml").write_text(config_text)
    assert subprocess.run([sys.executable, "-m", "trainer", "--config", str(reference / "c.yaml")], cwd=REPO,
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0  # as the UI's jobs
    expected = [r["loss"] for r in map(json.loads, (reference / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    url, workdir = ui_server(sandbox=False)
    ui_pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_ui(p, url))
    client = Client(url, verbose=False)
    first = client.predict(config_text.replace(str(reference / "run"), "runs/first"), api_name="/start_yaml")
    second = client.predict(config_text.replace(str(reference / "run"), "runs/second"), api_name="/start_yaml")
    assert client.predict(second, api_name="/job_status")["status"].endswith("queued")
    before = _rss_mb(ui_pid)

    valid = "model: {name_or_path: %s}\ndata: {train: %s}\ntraining: {epochs: 1}\n" % (tiny_model_dir, data)
    invalid = valid.replace("epochs: 1", "epochs: -1")

    latencies: list[float] = []

    def user(n: int) -> list[str]:
        # generous client timeouts: 20 clients share this test's one Python process (and 2 cores with the job)
        me = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        errors = []
        for i in range(6):
            started = time.time()
            checked = me.predict(valid if (n + i) % 2 else invalid, api_name="/validate_yaml")
            latencies.append(time.time() - started)
            if checked["valid"] != bool((n + i) % 2):
                errors.append(f"validate {n}/{i}: {checked}")
            result = me.predict(handle_file(str(data)), api_name="/upload_data")
            if "messages" not in str(result[1]):
                errors.append(f"upload {n}/{i}: {result[1]}")
        return errors

    with ThreadPoolExecutor(20) as pool:
        errors = [e for found in pool.map(user, range(20)) for e in found]
    assert errors == []
    print(f"\nUI under load: 20 clients x 6 (validate + upload), validate latency median "
          f"{sorted(latencies)[len(latencies) // 2]:.2f} s, max {max(latencies):.2f} s; UI RSS {before:.0f} -> {_rss_mb(ui_pid):.0f} MB")
    grown = _rss_mb(ui_pid) - before
    assert grown < 400, f"the UI grew by {grown:.0f} MB under load"

    deadline = time.time() + 300
    while time.time() < deadline:
        states = [client.predict(job, api_name="/job_status")["status"] for job in (first, second)]
        assert not any("failed" in s for s in states), states
        if all(s.endswith("finished") for s in states):
            break
        time.sleep(1)
    got = [r["loss"] for r in map(json.loads, (workdir / "runs" / "first" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert got == pytest.approx(expected, abs=1e-6)
    first_job = json.loads((workdir / "jobs" / first / "job.json").read_text())
    second_job = json.loads((workdir / "jobs" / second / "job.json").read_text())
    assert second_job["started"] >= first_job["finished"] - 2  # one job at a time: the second started after the first ended


def _is_ui(proc: Path, url: str) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"ui" in cmd and url.rsplit(":", 1)[-1].strip("/").encode() in cmd


def test_the_results_tab_offers_the_gguf_and_modelfile_and_the_serve_command(tmp_path):
    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=True))
    run = tmp_path / "runs" / "r"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("x")
    files, how = app.exported("runs/r")
    assert files == [] and f"trainer serve --run {run}" in how and "Export" in how
    (run / "export").mkdir()
    (run / "export" / "r-q8_0.gguf").write_bytes(b"GGUF")
    (run / "export" / "Modelfile").write_text("FROM ./r-q8_0.gguf\n")
    files, how = app.exported("runs/r")
    assert [Path(f).name for f in files] == ["r-q8_0.gguf", "Modelfile"]
    assert all(Path(f).is_file() and str(app.ws.root / ".ui-downloads") in f for f in files)
    assert "ollama create r -f Modelfile" in how


@pytest.mark.integration
def test_a_stopped_job_is_stopping_until_its_process_ends_and_says_to_press_resume(tmp_path, tiny_model_dir):
    """Stop marks the job "stopping" at once, and it stays so until trainer has saved its checkpoint and exited (3:
    stopped); the log ends with the UI's way to continue it, not the command line's."""
    from ui.jobs import JobManager

    jobs = JobManager(tmp_path)
    config = tiny_run_yaml(tiny_model_dir, str(_tiny_chat_data(tmp_path))).replace("max_steps: 4", "max_steps: 400")
    job = jobs.submit(config, "runs/tiny")
    deadline = time.time() + 120
    while time.time() < deadline and jobs.progress(job.id) is None:
        time.sleep(0.2)
    assert jobs.stop(job.id).status == "stopping"
    assert [j.status for j in jobs.poll()] in (["stopping"], ["stopped"])
    while time.time() < deadline and jobs.get(job.id).status == "stopping":
        jobs.poll()
        time.sleep(0.2)
    stopped = jobs.get(job.id)
    assert (stopped.status, stopped.returncode) == ("stopped", 3), jobs.log(job.id)
    said = jobs.log(job.id).split("stopped at step")[-1]
    assert "Press Resume to continue it." in said and "--resume" not in said, jobs.log(job.id)


def test_the_ollama_command_names_the_run_not_its_folder(tmp_path):
    """A run copied to a folder called `run`: the command names it as `trainer export` does (output.dir's name)."""
    from conftest import MINIMAL
    from ui.app import App

    app = App(Workspace(tmp_path, sandbox=True))
    run = tmp_path / "runs" / "run"
    (run / "export").mkdir(parents=True)
    (run / "model").mkdir()
    (run / "config.yaml").write_text(MINIMAL + "output:\n  dir: runs/recipes-v2\n")
    (run / "export" / "recipes-v2-q8_0.gguf").write_bytes(b"GGUF")
    (run / "export" / "Modelfile").write_text("FROM ./recipes-v2-q8_0.gguf\n")
    _, how = app.exported("runs/run")
    assert "ollama create recipes-v2 -f Modelfile" in how, how


def test_job_progress_and_outcome_come_from_metrics_and_the_exit_code(tmp_path):
    """Not from the printed log: progress from metrics.jsonl, stopped/failed from the exit code alone."""
    from trainer.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED
    from ui.jobs import Job, JobManager, outcome

    assert (EXIT_OK, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_INTERRUPTED) == (0, 2, 3, 130)  # documented in README.md
    assert outcome(0) == "finished"
    assert outcome(3) == "stopped" and outcome(2) == "failed" and outcome(130) == "failed" and outcome(None) == "failed"
    jobs = JobManager(tmp_path)
    (jobs.root / "j1").mkdir()
    jobs._save(Job("j1", "train", "c.yaml", "run", status="finished"))
    assert jobs.progress("j1") is None
    (tmp_path / "run").mkdir()
    rows = [{"step": 2, "loss": 1.0, "total_steps": 8}, {"step": 2, "eval_loss": 0.9}]
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert jobs.progress("j1") == (2, 8)


def _preview(page) -> dict:
    """The YAML preview's text, line by line (CodeMirror's lines; read as text, so a hidden tab reads the same)."""
    return yaml.safe_load("\n".join(page.locator("#yaml-preview .cm-line").all_text_contents()))


def _box(page, key):
    return page.locator(f"#field-{key.replace('.', '-')} input, #field-{key.replace('.', '-')} textarea").first


def _type(page, key, text, delay_ms):
    """Type like a person: select what the box holds, then one key at a time, `delay_ms` apart."""
    box = _box(page, key)
    box.click()
    box.press("Control+a")
    box.press_sequentially(text, delay=delay_ms)


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.slow
def test_in_a_browser_what_is_typed_is_what_the_yaml_shows_and_what_runs(ui_server, tiny_model_dir, tmp_path):
    """Typing at 10, 80 and 400 ms per key, then Start at once: the started job's config, and the YAML preview a
    moment later, hold exactly what the boxes show. An untouched page shows no made-up values."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: make test installs Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    url, workdir = ui_server(sandbox=False)
    data = _tiny_chat_data(workdir)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.locator("#form-status")).to_contain_text("valid", timeout=60_000)
        page.get_by_role("tab", name="Training").click()
        # an unset maximum shows as empty (the YAML's null), and editing another field does not turn it into 0
        assert _box(page, "training.max_steps").input_value() == ""
        _type(page, "training.batch_size", "2", 10)
        expect(page.locator("#yaml-preview")).to_contain_text("batch_size: 2", timeout=30_000)
        expect(page.locator("#form-status")).to_contain_text("The config is valid", timeout=30_000)
        assert "max_steps" not in _preview(page)["training"]

        # a short run of the tiny model, typed fast
        page.get_by_role("tab", name="Model").click()
        _type(page, "model.name_or_path", str(tiny_model_dir), 10)
        page.get_by_role("tab", name="Data").click()
        _type(page, "data.train", str(data), 10)
        _type(page, "data.max_seq_length", "64", 10)
        page.get_by_role("tab", name="Training").click()
        _type(page, "training.epochs", "", 10)
        _box(page, "training.epochs").press("Backspace")
        _type(page, "training.max_steps", "2", 10)
        page.get_by_role("tab", name="Evaluation").click()
        page.locator("#field-evaluation-after_training input").uncheck()

        started = set()
        for delay, rate in ((10, "0.00031"), (80, "0.00022"), (400, "0.0004")):
            page.get_by_role("tab", name="Configure").click()
            page.get_by_role("tab", name="Training").click()
            _type(page, "training.learning_rate", rate, delay)
            page.get_by_role("tab", name="Output").click()
            _type(page, "output.dir", f"runs/typed-{delay}", delay)
            shown = {"dir": _box(page, "output.dir").input_value(), "lr": _box(page, "training.learning_rate").input_value()}
            assert shown == {"dir": f"runs/typed-{delay}", "lr": rate}
            page.get_by_role("tab", name="Run").click()
            page.locator("#start").click()  # at once: no pause for the preview to catch up
            deadline = time.time() + 60
            while time.time() < deadline and not (new := {p.parent.name for p in (workdir / "jobs").glob("*/config.yaml")} - started):
                time.sleep(0.2)
            assert len(new) == 1, f"typing at {delay} ms per key: Start queued {len(new)} jobs"
            started |= new
            ran = yaml.safe_load((workdir / "jobs" / new.pop() / "config.yaml").read_text())
            assert (ran["output"]["dir"], ran["training"]["learning_rate"]) == (str(workdir / shown["dir"]), float(rate)), \
                f"typing at {delay} ms per key: the boxes showed {shown}, the run got {ran['output']['dir']}, {ran['training']['learning_rate']}"
            expect(page.locator("#yaml-preview")).to_contain_text(f"dir: runs/typed-{delay}", timeout=30_000)
            preview = _preview(page)
            assert (preview["output"]["dir"], preview["training"]["learning_rate"]) == (shown["dir"], float(rate))
            assert preview["model"]["name_or_path"] == str(tiny_model_dir) and preview["training"]["max_steps"] == 2
        page.screenshot(path=str(ARTIFACTS / "typed.png"), full_page=True)
        browser.close()


PYTHON_GRADER = {"type": "python", "name": "short", "source": "def grade(sample, item):\n    return float(len(sample['output_text']) < 20)\n"}


def test_python_graders_are_refused_at_their_field_unless_the_operator_allows_them(tmp_path, monkeypatch, in_repo):
    """A form is filled by whoever reaches the page: a python grader (code the server would run), in grpo's rewards
    or inside a multi grader of evaluation.graders, is a problem at its field until TRAINER_UI_ALLOW_PYTHON_GRADERS=1."""
    from ui.app import App

    monkeypatch.delenv("TRAINER_UI_ALLOW_PYTHON_GRADERS", raising=False)
    app = App(Workspace(tmp_path, sandbox=False))
    values = app.preset_values("cpu-demo")
    key = {s.key: i for i, s in enumerate(app.specs)}
    values[key["evaluation.graders"]] = yaml.safe_dump([{"type": "multi", "name": "m", "calculate_output": "short",
                                                         "graders": {"short": PYTHON_GRADER}}])
    _, problems, runnable = app.check(values)
    assert runnable is None and problems["evaluation.graders"].startswith("python graders run code from the config on this server")
    assert "TRAINER_UI_ALLOW_PYTHON_GRADERS=1" in problems["evaluation.graders"]
    assert set(problems) == {"evaluation.graders"}
    monkeypatch.setenv("TRAINER_UI_ALLOW_PYTHON_GRADERS", "1")
    _, problems, runnable = app.check(values)
    assert problems == {} and runnable is not None and "calculate_output: short" in runnable


def test_try_this_grader_shows_the_score_the_sub_scores_and_the_error(tmp_path, monkeypatch):
    from ui.app import App

    monkeypatch.delenv("TRAINER_UI_ALLOW_PYTHON_GRADERS", raising=False)
    app = App(Workspace(tmp_path, sandbox=False))
    exact = "type: string_check\nname: correct\noperation: ilike\ninput: '{{ sample.output_text }}'\nreference: '{{ item.answer }}'\n"
    assert app.try_grader(exact, "It is paris.", '{"answer": "Paris"}') == "**Score: 1**"
    missing = app.try_grader(exact, "It is Paris.", '{"city": "Paris"}')
    assert missing.startswith("**Score: 0**") and "**Error** (the score counts as 0): correct:" in missing and "answer" in missing
    multi = yaml.safe_dump({"type": "multi", "name": "m", "calculate_output": "0.5 * a + b / 4", "graders": {
        "a": yaml.safe_load(exact), "b": {"type": "text_similarity", "name": "b", "evaluation_metric": "fuzzy_match",
                                          "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}}})
    shown = app.try_grader(multi, "Paris", '{"answer": "Paris"}')
    assert shown == "**Score: 0.75**\n- a: 1\n- b: 1"
    assert app.try_grader("type: string_check\nname: x\n", "a", "{}").startswith("**The grader has problems:**")
    assert app.try_grader(exact, "a", "{not json").startswith("**Cannot read it:**")
    assert app.try_grader(yaml.safe_dump(PYTHON_GRADER), "short", "{}").startswith("**Refused:** python graders run code")
    monkeypatch.setenv("TRAINER_UI_ALLOW_PYTHON_GRADERS", "1")
    assert app.try_grader(yaml.safe_dump(PYTHON_GRADER), "short", "{}") == "**Score: 1**"


# --- serving runs from the Results tab (ui/serving.py: one `trainer serve` child of the UI) --------------------------

def test_serving_nothing_or_an_unfinished_run_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    from ui.app import App

    monkeypatch.delenv("TRAINER_UI_SERVE_PORT", raising=False)
    app = App(Workspace(tmp_path, sandbox=True))
    assert app.serve([]).startswith("**Nothing to serve:**") and app.serve(None).startswith("**Nothing to serve:**")
    (tmp_path / "runs" / "half").mkdir(parents=True)
    said = app.serve(["runs/half"])
    assert said.startswith("**Cannot serve `runs/half`:** it has no trained model yet") and "Traceback" not in said
    assert app.serve(["../../etc"]).startswith("**Cannot serve `../../etc`:** run ")  # the sandbox's refusal
    monkeypatch.setenv("TRAINER_UI_SERVE_PORT", "80a")
    assert "TRAINER_UI_SERVE_PORT='80a' is not a port number" in app.serve(["runs/half"])
    assert app.serving.served is None and app.serve_status().startswith("Nothing is served.")


@pytest.fixture(scope="module")
def two_lora_runs(demo_run, tmp_path_factory):
    """Two LoRA runs on one base, the cheapest llama-server can serve: the demo run, and a copy of it whose adapter is
    zero (it answers as the base model does) under the name `plain` (as tests/test_serve_llamacpp.py serves them)."""
    from test_serve_llamacpp import _zeroed_copy

    return demo_run, _zeroed_copy(demo_run, tmp_path_factory.mktemp("plain") / "plain")


def _serving_status(read, timeout: float = 900) -> str:
    deadline = time.time() + timeout
    while "**Serving" not in (status := read()):
        assert "stopped**" not in status and time.time() < deadline, status
        time.sleep(1)
    return status


def _engine_pids(base_url: str) -> list[int]:
    return [e["pid"] for e in httpx.get(base_url.removesuffix("/v1") + "/health", timeout=10).json()["engines"]]


def _gone(pid: int) -> bool:
    from trainer import childproc

    return not childproc.alive(pid)


@pytest.mark.llamacpp
@pytest.mark.integration
@pytest.mark.slow
def test_two_runs_served_at_once_answer_by_name_and_a_new_set_replaces_them(two_lora_runs, tmp_path, monkeypatch):
    """App.serve: one real `trainer serve` for two runs, each answering by its model name to the official openai
    client; serving another set stops that process and its engine; a killed server is said, not hidden."""
    import re
    import signal

    from openai import APIConnectionError, OpenAI

    from ui.app import App

    for name in ("TRAINER_UI_SERVE_PORT", "TRAINER_UI_SERVE_HOST"):
        monkeypatch.delenv(name, raising=False)
    recipes, plain = two_lora_runs
    app = App(Workspace(tmp_path, sandbox=False))
    started = app.serve([str(recipes), str(plain)])
    assert started.startswith("**Starting** `trainer serve`"), started
    status = _serving_status(app.serve_status)
    base = re.search(r"`(http://127\.0\.0\.1:\d+/v1)`", status).group(1)
    assert "**Serving 2 models**" in status and f"| `recipes` | `{recipes}` |" in status and f"| `plain` | `{plain}` |" in status
    assert f"OpenAI(base_url='{base}', api_key='none')" in status and f"curl {base}/chat/completions" in status
    client = OpenAI(base_url=base, api_key="none", max_retries=0, timeout=300)
    assert sorted(m.id for m in client.models.list().data) == ["plain", "recipes"]
    messages = [{"role": "user", "content": "Give me a recipe for tomato soup."}]
    answers = {}
    for name in ("recipes", "plain"):
        reply = client.chat.completions.create(model=name, messages=messages, max_tokens=4, temperature=0)
        assert reply.model == name and reply.choices[0].message.content.strip()
        answers[name] = reply.choices[0].message.content
    assert answers["recipes"] != answers["plain"], answers  # each name reached its own adapter
    first, engines = app.serving.served.process, _engine_pids(base)

    app.serve([str(plain)])  # another set: the first server and its engine are stopped first
    assert first.poll() is not None and all(_gone(pid) for pid in engines)
    with pytest.raises(APIConnectionError):
        client.models.list()
    status = _serving_status(app.serve_status)
    assert "**Serving 1 model**" in status and "`plain`" in status and "`recipes`" not in status
    second = app.serving.served.process
    os.kill(second.pid, signal.SIGKILL)  # killed from outside: the page says so
    second.wait(timeout=30)
    status = app.serve_status()
    assert status.startswith("**`trainer serve` stopped** (killed by SIGKILL)") and "nothing is served now" in status
    app.shutdown()
    assert app.serving.served.process.poll() is not None


@pytest.mark.browser
@pytest.mark.llamacpp
@pytest.mark.integration
@pytest.mark.slow
def test_in_a_browser_two_runs_are_served_from_the_results_tab(ui_server, two_lora_runs, tmp_path):
    """The run chosen in Results is picked to serve; a second is added; Serve shows both model names and the URL;
    Stop serving stops it."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: make test installs Debian's chromium package (apt-get install chromium)")
    import re

    from playwright.sync_api import expect, sync_playwright

    from ui.jobs import Job, JobManager

    recipes, plain = two_lora_runs
    jobs = JobManager(tmp_path / "work")  # the two runs, as runs trained earlier in this UI
    for i, run in enumerate((recipes, plain)):
        (jobs.root / f"j{i}").mkdir()
        jobs._save(Job(f"j{i}", "train", str(run / "config.yaml"), str(run), status="finished", created=float(i)))
    url, _ = ui_server(sandbox=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Results").click()
        expect(page.locator("#serve-status")).to_contain_text("Nothing is served", timeout=60_000)
        expect(page.locator("#serve-runs")).to_contain_text(str(recipes))  # the run chosen above (the first), by default
        page.locator("#run-choice input").fill(str(plain))
        page.locator("#run-choice input").press("Enter")
        expect(page.locator("#serve-runs")).to_contain_text(str(plain), timeout=60_000)  # ... and as it changes
        expect(page.locator("#serve-runs")).not_to_contain_text(str(recipes))
        page.locator("#serve-runs input").click()
        page.get_by_role("option", name=str(recipes)).click()
        expect(page.locator("#serve-runs")).to_contain_text(str(recipes), timeout=30_000)
        expect(page.locator("#serve-runs")).to_contain_text(str(plain))
        page.locator("#serve").click()
        expect(page.locator("#serve-status")).to_contain_text("Starting", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "serve-starting.png"), full_page=True)
        expect(page.locator("#serve-status")).to_contain_text("Serving 2 models", timeout=900_000)
        status = page.locator("#serve-status").inner_text()
        base = re.search(r"http://127\.0\.0\.1:\d+/v1", status).group(0)
        assert "recipes" in status and "plain" in status and "base_url=" in status, status
        assert sorted(m["id"] for m in httpx.get(f"{base}/models", timeout=30).json()["data"]) == ["plain", "recipes"]
        page.screenshot(path=str(ARTIFACTS / "serving-two-runs.png"), full_page=True)
        page.locator("#stop-serving").click()
        expect(page.locator("#serve-status")).to_contain_text("Stopped serving", timeout=120_000)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/models", timeout=10)
        browser.close()
