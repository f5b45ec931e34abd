"""trainer's web UI (Gradio Blocks): a form that writes the YAML, runs it, shows it, and lets you talk to the result.

Run it with `trainer ui` (or `make ui`), or as a Hugging Face Space (app_file: ui/app.py). The form is generated
from trainer/config/schema.json (ui/form.py); every run is `trainer --config` in its own process (ui/jobs.py);
paths typed into the form are checked against the work directory (ui/workspace.py).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script (Hugging Face Spaces: python ui/app.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr
import yaml

from trainer.config import parse_config
from trainer.config.presets import PRESETS, preset_text
from trainer.config.schema import load_schema
from trainer.errors import UserError
from ui.form import FieldSpec, fields, from_config, to_document
from ui.jobs import JobManager
from ui.workspace import Workspace, path_keys

_LABELS = {"cpu-demo": "CPU demo (SmolLM2-135M, LoRA)", "gpu-lora": "GPU LoRA (Llama 3.2 3B)",
           "gpu-qlora": "GPU QLoRA (Llama 3.1 8B)", "full": "Full fine-tune (Llama 3.2 1B)"}
PRESET_LABELS = {name: _LABELS.get(name, name) for name in PRESETS}  # every shipped preset, named for people
REPO = Path(__file__).resolve().parent.parent
RUN_FILES = ("config.yaml", "README.md", "summary.json", "metrics.jsonl", "loss.png", "eval.md", "eval.json", "eval.png")


class App:
    """The UI's state and the functions behind its events (plain methods, so tests can call them directly)."""

    def __init__(self, workspace: Workspace | None = None, schema: dict | None = None):
        self.ws = workspace or Workspace.from_env()
        self.schema = schema or load_schema()
        self.specs: list[FieldSpec] = fields(self.schema)
        self.paths = path_keys(self.schema)
        self.jobs = JobManager(self.ws.root)
        self._loaded: dict[str, object] = {}
        if self.ws.sandbox:
            self._bundle_demo_data()
        elif REPO not in self.ws.read_only_roots:
            self.ws.read_only_roots = (*self.ws.read_only_roots, REPO)  # the presets' data/recipes/... from anywhere

    def _bundle_demo_data(self) -> None:
        """The CPU demo preset names data/recipes/...: give a sandboxed work directory its own copy."""
        target = self.ws.root / "data" / "recipes"
        if not target.exists() and (REPO / "data" / "recipes").is_dir():
            shutil.copytree(REPO / "data" / "recipes", target)

    # --- the form ---
    def preset_values(self, name: str) -> list:
        key = next((k for k, label in PRESET_LABELS.items() if label == name), name)
        config = parse_config(preset_text(key), f"{key} preset", check_files=False)
        return from_config(self.specs, config.to_dict())

    def check(self, values: list) -> tuple[str, dict[str, str], str | None]:
        """(YAML preview, {field key: problem}, YAML text to run or None when invalid)."""
        document = to_document(self.specs, values)
        problems: dict[str, str] = {}
        resolved = copy.deepcopy(document)
        for key, message in self.ws.check_paths(resolved, self.paths):
            problems[".".join(key)] = message
        try:
            preview = parse_config(yaml.safe_dump(document, sort_keys=False), "form", check_files=False).to_yaml()
        except UserError as exc:
            preview = yaml.safe_dump(document, sort_keys=False)
            for problem in exc.problems:
                problems.setdefault(problem.path, problem.message)
            return preview, problems, None
        try:
            runnable = parse_config(yaml.safe_dump(resolved, sort_keys=False), "form").to_yaml()
        except UserError as exc:
            for problem in exc.problems:
                problems.setdefault(problem.path, problem.message)
            runnable = None
        return preview, problems, None if problems else runnable

    def load_yaml(self, path: str) -> list:
        """An uploaded YAML (trainer's or AutoTrain's) -> form values."""
        from trainer.config import load_config

        config = load_config(path, check_files=False)
        return from_config(self.specs, config.to_dict())

    # --- data ---
    def inspect_data(self, source: str) -> tuple[list[dict], str, list[str], set[str]]:
        """(first rows, what was detected, the columns found, the column settings the format needs) for a data file."""
        from trainer.data.formats import DEFAULT_COLUMNS, detect_format
        from trainer.data.records import read_records

        resolved, why = self.ws.resolve(source, "data")
        if why:
            raise ValueError(f"data.train {why}")
        records, problems = read_records(resolved)
        if not records:
            raise ValueError(f"{source}: no readable records" + (f" ({problems[0]})" if problems else ""))
        columns = sorted({k for r in records[:200] for k in r.row})
        rows = [{k: json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v for k, v in r.row.items()} for r in records[:5]]
        try:
            fmt, detection = detect_format(records, {})
            needed = set(DEFAULT_COLUMNS[fmt])
            rows = [{"conversation": text, **row} for row, text in zip(rows, _readable(records[:5], fmt))]
        except UserError as exc:  # unknown column names: every mapping is offered
            detection, needed = exc.problems[0].message, {k for names in DEFAULT_COLUMNS.values() for k in names}
        return rows, f"{detection}; {len(records)} records, {len(problems)} unreadable", columns, needed

    def data_report(self, runnable_yaml: str) -> str:  # includes the chat template's features (renders tools, ...)
        """The data report (`trainer data`): problems with their lines, token statistics, steps."""
        import subprocess

        path = self.ws.root / ".ui-data-check.yaml"
        path.write_text(runnable_yaml, encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "trainer", "data", "--config", str(path)], cwd=self.ws.root,
                              capture_output=True, text=True, timeout=600)
        return (done.stdout + ("\n" + done.stderr if done.stderr.strip() else "")).strip()

    # --- runs ---
    def start(self, runnable_yaml: str) -> str:
        config = parse_config(runnable_yaml, "form")
        job = self.jobs.submit(runnable_yaml, config.output.dir)
        return job.id

    def job_view(self, job_id: str | None) -> dict:
        jobs = self.jobs.poll()
        view = {"queue": [[j.id, j.kind, j.status, self.ws.relative(j.run_dir)] for j in reversed(jobs)], "log": "",
                "progress": "", "losses": [], "status": "no job yet"}
        job = next((j for j in jobs if j.id == job_id), jobs[-1] if jobs else None)
        if job is None:
            return view
        view["job"] = job.id
        view["status"] = f"{job.id}: {job.status}" + (f" (exit code {job.returncode})" if job.returncode not in (None, 0) else "")
        view["log"] = self.jobs.log(job.id)
        done = self.jobs.progress(job.id)
        if done:
            view["progress"] = f"step {done[0]} of {done[1]} ({done[0] / max(done[1], 1):.0%})"
        view["losses"] = [{"step": r["step"], "loss": r[k], "series": name} for r in self.jobs.losses(job.id)
                          for k, name in (("loss", "training"), ("eval_loss", "validation")) if k in r]
        return view

    def finished_runs(self) -> list[str]:
        # a relative run_dir is inside the work directory; an absolute one stays as it is
        return sorted({self.ws.relative(j.run_dir) for j in self.jobs.jobs() if (self.ws.root / j.run_dir / "model").is_dir()})

    def run_path(self, run: str) -> Path:
        resolved, why = self.ws.resolve(run, "output")
        if why:
            raise ValueError(f"run {why}")
        return Path(resolved)

    def report(self, run: str) -> str:
        path = self.run_path(run)
        for name in ("eval.md", "README.md"):
            if (path / name).is_file():
                text = (path / name).read_text(encoding="utf-8")
                if text.startswith("---\n"):  # the model card's metadata block is for the Hub, not for people
                    text = text.split("\n---\n", 1)[-1]
                return text
        return "This run has no evaluation yet: press Evaluate."

    def evaluate(self, run: str) -> str:
        path = self.run_path(run)
        job = self.jobs.submit((path / "config.yaml").read_text(encoding="utf-8"), str(path), kind="eval")
        return job.id

    def archive(self, run: str) -> str:
        """A zip of what a run gives you (adapter or model, config, card, metrics, evaluation), not its checkpoints."""
        path = self.run_path(run)
        staging = self.ws.root / ".ui-downloads" / path.name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in RUN_FILES:
            if (path / name).is_file():
                shutil.copy2(path / name, staging / name)
        for folder in ("model", "merged"):
            if (path / folder).is_dir():
                shutil.copytree(path / folder, staging / folder)
        return shutil.make_archive(str(staging), "zip", staging)

    def reply(self, run: str, history: list[dict], message: str, max_new_tokens: int = 256):
        """Stream the fine-tuned model's answer: yields the growing history."""
        from trainer.generate import load_run, stream_answer

        path = str(self.run_path(run))
        if path not in self._loaded:
            self._loaded = {path: load_run(path)}  # one model in memory at a time
        loaded = self._loaded[path]
        history = list(history or []) + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        conversation = [{"role": m["role"], "content": _text(m["content"])} for m in history[:-1]]
        for piece in stream_answer(loaded, conversation, max_new_tokens):
            history[-1] = {"role": "assistant", "content": history[-1]["content"] + piece}
            yield history


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Gradio may hand back [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


# --- rendering -----------------------------------------------------------------------------------------------------

def _component(spec: FieldSpec, value):
    info = spec.description
    common = dict(label=spec.title, info=info, elem_id="field-" + spec.key.replace(".", "-"))
    if spec.kind in ("dropdown",):
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    if spec.kind == "multiselect":
        return gr.Dropdown(choices=list(spec.choices), value=value, multiselect=True, **common)
    if spec.kind in ("checkbox", "toggle"):
        return gr.Checkbox(value=bool(value), label=spec.title if spec.kind == "checkbox" else f"Use: {spec.title}", info=info,
                           elem_id=common["elem_id"])
    if _is_slider(spec):  # a share or a probability: a slider over its bounds
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=0.001, value=value, **common)
    if spec.kind in ("integer", "number"):
        # Open-ended numbers show their bounds in the help text rather than as gr.Number limits: Gradio would refuse
        # an out-of-range number itself, in its own words, before the validator could say what is allowed.
        bounds = _bounds(spec)
        return gr.Number(value=value, precision=0 if spec.kind == "integer" else None,
                         **{**common, "info": f"{info} {bounds}".strip()})
    if spec.path[:2] == ("data", "columns"):  # column mapping: the columns of the loaded file, or any name
        return gr.Dropdown(choices=[], value=value or None, allow_custom_value=True, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


def _is_slider(spec: FieldSpec) -> bool:
    return (spec.kind == "number" and not spec.nullable and not spec.exclusive_minimum and spec.minimum is not None
            and spec.maximum is not None and spec.maximum - spec.minimum <= 1)


def _bounds(spec: FieldSpec) -> str:
    low = f"above {spec.minimum:g}" if spec.exclusive_minimum else f"{spec.minimum:g}" if spec.minimum is not None else None
    if low is not None and spec.maximum is not None:
        return f"({low} to {spec.maximum:g})" if not spec.exclusive_minimum else f"({low}, at most {spec.maximum:g})"
    if low is not None:
        return f"(at least {low})" if not spec.exclusive_minimum else f"({low})"
    return f"(at most {spec.maximum:g})" if spec.maximum is not None else ""


def _help(spec: FieldSpec) -> str:
    shown = spec.kind in ("integer", "number") and not _is_slider(spec)
    return f"{spec.description} {_bounds(spec)}".strip() if shown else spec.description


def build(app: App | None = None) -> gr.Blocks:
    app = app or App()
    specs = app.specs
    initial = app.preset_values("cpu-demo")
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(spec.group, []).append(i)

    with gr.Blocks(title="trainer") as demo:
        gr.Markdown("# trainer\nFine-tune an open language model: fill in the form (or pick a preset), check the data, "
                    "start training, then compare and chat with the result.")
        job_state = gr.State(None)
        runnable_state = gr.State(None)
        components: list = [None] * len(specs)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    preset = gr.Dropdown(list(PRESET_LABELS.values()), value=PRESET_LABELS["cpu-demo"], label="Preset",
                                         info="Fills the whole form with a tested starting point.", elem_id="preset")
                    upload_yaml = gr.File(label="Load a YAML (trainer's or AutoTrain's)", file_types=[".yaml", ".yml"],
                                          type="filepath", elem_id="upload-yaml")
                with gr.Tabs():
                    for group, indices in groups.items():
                        with gr.Tab(group, elem_id=f"tab-{group.lower()}"):
                            if group == "Data":
                                data_file = gr.File(label="Upload training data (.jsonl, .csv, .parquet)",
                                                    file_types=[".jsonl", ".json", ".csv", ".parquet"], type="filepath",
                                                    elem_id="upload-data")
                                detected = gr.Markdown(elem_id="data-detected")
                                preview_rows = gr.Dataframe(label="First rows", interactive=False, elem_id="data-preview")
                            mapping = [i for i in indices if specs[i].path[:2] == ("data", "columns")]
                            if mapping:  # column mapping: shown for the columns the loaded file's format needs
                                with gr.Row():
                                    for i in mapping:
                                        components[i] = _component(specs[i], initial[i])
                                        components[i].visible = bool(initial[i])
                            for i in [i for i in indices if not specs[i].advanced and i not in mapping]:
                                components[i] = _component(specs[i], initial[i])
                            advanced = [i for i in indices if specs[i].advanced and i not in mapping]
                            if advanced:  # folded away, unless the whole group is advanced settings
                                with gr.Accordion("Advanced", open=len(advanced) + len(mapping) == len(indices)):
                                    for i in advanced:
                                        components[i] = _component(specs[i], initial[i])
                            if group == "Data":
                                check_data = gr.Button("Check the data", elem_id="check-data")
                                data_report = gr.Textbox(label="Data report", lines=14, interactive=False, elem_id="data-report")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="form-status")
                yaml_preview = gr.Code(language="yaml", label="config.yaml (live)", interactive=False, elem_id="yaml-preview")
                download = gr.DownloadButton("Download the YAML", elem_id="download-yaml")

        with gr.Tab("Run", elem_id="tab-run"):
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start")
                stop = gr.Button("Stop (saves a checkpoint)", elem_id="stop")
                resume = gr.Button("Resume", elem_id="resume")
            job_status = gr.Markdown(elem_id="job-status")
            progress = gr.Markdown(elem_id="job-progress")
            curve = gr.LinePlot(x="step", y="loss", color="series", label="Loss", elem_id="loss-curve")
            log = gr.Textbox(label="Log (last lines)", lines=14, max_lines=14, interactive=False, autoscroll=True, elem_id="job-log")
            queue = gr.Dataframe(headers=["job", "kind", "status", "run directory"], label="Jobs", interactive=False, elem_id="queue")
            timer = gr.Timer(1.0)

        with gr.Tab("Results", elem_id="tab-results"):
            with gr.Row():
                run_choice = gr.Dropdown(choices=app.finished_runs(), label="Run", allow_custom_value=True, elem_id="run-choice")
                refresh_runs = gr.Button("Refresh", elem_id="refresh-runs")
                evaluate = gr.Button("Evaluate (base, few-shot, tuned)", elem_id="evaluate")
                zip_button = gr.DownloadButton("Download the run (zip)", elem_id="download-run")
            report = gr.Markdown(elem_id="report")
            chatbot = gr.Chatbot(label="Chat with the fine-tuned model", elem_id="chatbot", height=360)
            message = gr.Textbox(label="Your message", elem_id="chat-input")

        # --- events ---
        def refresh(*values):
            preview, problems, runnable = app.check(list(values))
            path = None
            if runnable is not None:
                path = app.ws.root / ".ui-config.yaml"
                path.write_text(preview, encoding="utf-8")
            updates = [gr.update(info=("⚠ " + problems[s.key]) if s.key in problems else _help(s)) for s in specs]
            text = "**The config is valid.**" if not problems else "**Fix these before training:**\n" + "\n".join(
                f"- `{k or 'config'}`: {m}" for k, m in problems.items())
            return [preview, text, gr.update(value=str(path) if path else None), runnable, *updates]

        outputs = [yaml_preview, status, download, runnable_state, *components]
        for component in components:  # what the user types; filling the form in code refreshes once, below
            component.input(refresh, components, outputs, show_progress="hidden")
        demo.load(refresh, components, outputs)
        preset.input(lambda name: app.preset_values(name), preset, components).then(refresh, components, outputs)
        upload_yaml.upload(lambda path: app.load_yaml(path), upload_yaml, components).then(refresh, components, outputs)

        train_index = next(i for i, s in enumerate(specs) if s.key == "data.train")
        column_indices = [i for i, s in enumerate(specs) if s.path[:2] == ("data", "columns")]

        def data_shown(source: str):
            """Preview, detected format and column mapping for a data file (uploaded, or a path typed in the form)."""
            import pandas as pd

            try:
                rows, detection, columns, needed = app.inspect_data(source)
            except (ValueError, UserError, OSError) as exc:
                message = exc.render() if isinstance(exc, UserError) else str(exc)
                return [source, f"**Could not read the data:** {message}", None, *[gr.update() for _ in column_indices]]
            limit = {"conversation": 3000}  # the readable conversation (tool calls, reasoning) is shown whole
            table = pd.DataFrame([{k: (v if len(v) <= limit.get(k, 300) else v[:limit.get(k, 300)] + " ...") for k, v in row.items()}
                                  for row in rows])
            return [source, f"**{detection}.** Columns: {', '.join(columns)}", table,
                    *[gr.update(choices=columns, visible=specs[i].path[-1] in needed) for i in column_indices]]

        def data_uploaded(path):
            try:
                saved = app.ws.save_upload(path)
            except ValueError as exc:
                raise gr.Error(str(exc)) from None
            return data_shown(app.ws.relative(saved))

        data_file.upload(data_uploaded, data_file, [components[train_index], detected, preview_rows,
                                                     *[components[i] for i in column_indices]],
                         api_name="upload_data").then(refresh, components, outputs).then(
            lambda runnable: app.data_report(runnable) if runnable else "Fix the config first.", runnable_state, data_report)
        components[train_index].blur(data_shown, components[train_index], [components[train_index], detected, preview_rows,
                                                                          *[components[i] for i in column_indices]])
        check_data.click(lambda runnable: app.data_report(runnable) if runnable else "Fix the config first.",
                         runnable_state, data_report, api_name="data_report")

        def started(runnable):
            if not runnable:
                raise gr.Error("The config has problems; they are listed beside the form.")
            return app.start(runnable)

        start.click(started, runnable_state, job_state, api_name="start")
        stop.click(lambda job: app.jobs.stop(job).id if job else None, job_state, job_state, api_name="stop")
        resume.click(lambda job: app.jobs.resume(job).id if job else None, job_state, job_state, api_name="resume")

        def tick(job):
            import pandas as pd

            view = app.job_view(job)
            losses = pd.DataFrame(view["losses"] or [], columns=["step", "loss", "series"])
            return view.get("job"), view["status"], view["progress"], losses, view["log"], view["queue"]

        timer.tick(tick, job_state, [job_state, job_status, progress, curve, log, queue], show_progress="hidden")
        gr.Button("Refresh status", visible=False).click(tick, job_state, [job_state, job_status, progress, curve, log, queue],
                                                         api_name="status")

        refresh_runs.click(lambda: gr.update(choices=app.finished_runs()), None, run_choice)
        run_choice.change(app.report, run_choice, report, api_name="report")
        evaluate.click(app.evaluate, run_choice, job_state, api_name="evaluate")
        run_choice.change(lambda run: app.archive(run) if run else None, run_choice, zip_button)
        message.submit(app.reply, [run_choice, chatbot, message], chatbot, api_name="chat").then(lambda: "", None, message)

        # Scripting (gradio_client): the same operations on YAML text, without the form.
        def checked(config_yaml: str) -> tuple[str | None, dict, str | None]:
            """(preview, problems, runnable YAML or None) of YAML text, through the same check as the form."""
            try:
                values = from_config(specs, parse_config(config_yaml, "api", check_files=False).to_dict())
            except UserError as exc:
                return None, {p.path: p.message for p in exc.problems}, None
            return app.check(values)

        def validate_yaml(config_yaml: str) -> dict:
            """Check a config; returns {"valid", "problems": {key: message}, "config": normalised YAML}."""
            preview, problems, runnable = checked(config_yaml)
            return {"valid": runnable is not None, "problems": problems, "config": preview}

        def start_yaml(config_yaml: str) -> str:
            """Queue a training run of a config; returns the job id."""
            _, problems, runnable = checked(config_yaml)
            if runnable is None:
                raise gr.Error("; ".join(f"{k}: {m}" for k, m in problems.items()))
            return app.start(runnable)

        def job_status(job_id: str) -> dict:
            """Status, progress, log tail and losses of a job."""
            return app.job_view(job_id)

        def stop_job(job_id: str) -> str:
            """Stop a job (a training run saves a checkpoint first)."""
            return app.jobs.stop(job_id).status

        def resume_job(job_id: str) -> str:
            """Queue a stopped or failed training job again, from its newest checkpoint."""
            return app.jobs.resume(job_id).status

        def chat_once(run: str, message: str, max_new_tokens: int = 64) -> str:
            """One answer of a run's fine-tuned model."""
            *_, history = app.reply(run, [], message, int(max_new_tokens))
            return history[-1]["content"]

        for fn in (validate_yaml, start_yaml, job_status, stop_job, resume_job, chat_once):
            gr.api(fn, api_name=fn.__name__)
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860) -> None:
    app = App()
    auth = os.environ.get("TRAINER_UI_AUTH")
    credentials = tuple(auth.split(":", 1)) if auth and ":" in auth else None
    build(app).queue(default_concurrency_limit=2).launch(
        server_name=host, server_port=port, auth=credentials, max_file_size=f"{app.ws.max_upload_mb:.0f}mb",
        allowed_paths=[str(app.ws.root / ".ui-downloads"), str(app.ws.root / ".ui-config.yaml")], show_error=True,
    )


if __name__ == "__main__":
    on_space = bool(os.environ.get("SPACE_ID"))
    launch("0.0.0.0" if on_space else os.environ.get("TRAINER_UI_HOST", "127.0.0.1"), int(os.environ.get("PORT", "7860")))


def _readable(records, fmt: str) -> list[str]:
    """The first records as people read a conversation: tool calls as name(arguments), reasoning marked."""
    from trainer.data.conversations import readable
    from trainer.data.formats import columns_for, to_example

    out = []
    for record in records:
        example, problems = to_example(record, fmt, columns_for(fmt, {}), "assistant")
        out.append(readable(example) if example else "; ".join(p.message for p in problems))
    return out
