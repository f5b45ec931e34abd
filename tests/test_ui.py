"""The web UI: the schema-driven form, the sandbox, the API (gradio_client) and a real browser (Chromium)."""
import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

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
        env = {**os.environ, "TRAINER_WORKDIR": str(workdir), "TRAINER_UI_SANDBOX": "1" if sandbox else "0"}
        if auth:
            env["TRAINER_UI_AUTH"] = auth
        process = subprocess.Popen([sys.executable, "-m", "trainer", "ui", "--port", str(port)], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(process)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
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
    job = client.predict(tiny_run_yaml(tiny_model_dir, str(data)).replace("max_steps: 4", "max_steps: 400"), api_name="/start_yaml")
    deadline = time.time() + 120
    while time.time() < deadline:
        status = client.predict(job, api_name="/job_status")
        if status["progress"]:
            break
        time.sleep(0.5)
    assert client.predict(job, api_name="/stop_job") in ("running", "stopped")
    while time.time() < deadline and "running" in client.predict(job, api_name="/job_status")["status"]:
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
    assert status["losses"] and status["progress"].startswith("step 400 of 400")
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
        shot(page, "plan")

        page.get_by_role("tab", name="Data").click()
        page.locator("#upload-data input[type=file]").set_input_files(str(REPO / "data" / "recipes" / "train.jsonl"))
        expect(page.locator("#data-detected")).to_contain_text("messages", timeout=30_000)
        expect(page.locator("#data-preview")).to_contain_text("ingredients", timeout=30_000)
        expect(page.locator("#yaml-preview")).to_contain_text("/train.jsonl", timeout=30_000)
        expect(page.locator("#yaml-preview")).to_contain_text("uploads/", timeout=30_000)
        shot(page, "data-preview")
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
        expect(page.locator("#loss-curve canvas, #loss-curve svg").first).to_be_visible(timeout=30_000)
        shot(page, "finished-with-loss-curve")

        page.get_by_role("tab", name="Results").click()
        page.locator("#refresh-runs").click()
        page.locator("#run-choice input").fill("runs/quickstart")
        page.locator("#run-choice input").press("Enter")
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
                          capture_output=True).returncode == 0
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
