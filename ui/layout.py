"""The UI's Gradio Blocks: the form, the Run, Results and Jobs tabs, their events, and the scripting API.

`build_blocks` lays out each part with a small function and wires its events
with another; the functions behind the events are App's methods (ui/app.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from trainer.errors import UserError
from ui.app import PRESET_LABELS, App
from ui.form import FieldSpec, from_config, number_text

Field = gr.Dropdown | gr.Checkbox | gr.Slider | gr.Number | gr.Textbox  # what _component makes for a schema field


@dataclass
class Form:
    """The form's components: one per schema field (`fields`), and those around them."""

    fields: list[Field]
    preset: gr.Dropdown
    upload_yaml: gr.File
    data_file: gr.File
    validation_file: gr.File
    detected: gr.Markdown
    preview_rows: gr.Dataframe
    check_data: gr.Button
    data_report: gr.Textbox
    status: gr.Markdown
    yaml_preview: gr.Code  # what differs from the defaults
    yaml_full: gr.Code  # the whole normalised config, folded away
    download: gr.DownloadButton
    runnable: gr.State  # the YAML to run, or None while the form has problems
    plan: gr.Markdown  # `trainer plan` for the runnable YAML, beside the form
    shown_problems: gr.State  # {field key: problem} beside the fields now, None before the first check


@dataclass
class RunTab:
    start: gr.Button
    stop: gr.Button
    resume: gr.Button
    job_status: gr.Markdown
    progress: gr.Markdown
    curve: gr.Plot  # matplotlib's (trainer.rundir.loss_figure): whole steps, a single validation point shown
    curve_shown: gr.State  # (job, losses) the curve shows, so a tick redraws it only when they change
    log: gr.Textbox
    queue: gr.Dataframe
    timer: gr.Timer


@dataclass
class ResultsTab:
    run_choice: gr.Dropdown
    refresh_runs: gr.Button
    evaluate: gr.Button
    zip_button: gr.DownloadButton
    export: gr.Button
    report: gr.Markdown
    export_files: gr.File  # the run's GGUF files and Modelfile, to download
    use_it: gr.Markdown  # the serve and Ollama commands
    serve_runs: gr.Dropdown  # the runs to serve together (the current run by default)
    serve: gr.Button
    stop_serving: gr.Button
    serve_status: gr.Markdown  # what is served, where, and how to ask it (ui/serving.py)
    serve_timer: gr.Timer
    chatbot: gr.Chatbot
    message: gr.Textbox


def build_blocks(app: App) -> gr.Blocks:
    with gr.Blocks(title="trainer") as demo:
        gr.Markdown("# trainer\nFine-tune an open language model: fill in the form (or pick a preset), check the data, "
                    "start training, then compare and chat with the result.")
        job_state = gr.State(None)
        with gr.Tabs():  # Run and Results at the top of the page, not below the whole form
            with gr.Tab("Configure", elem_id="tab-configure"):
                form = _form(app)
            run_tab = _run_tab()
            results = _results_tab(app)
            _service_tab()
        _wire_form(app, demo, form)
        _wire_data(app, form)
        _wire_run(app, form, run_tab, job_state)
        _wire_results(app, results, job_state)
        _api(app)
    return demo


# --- layout --------------------------------------------------------------------------------------------------------

def _form(app: App) -> Form:
    specs, initial = app.specs, app.preset_values("cpu-demo")
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(spec.group, []).append(i)
    components: list[Any] = [None] * len(specs)
    data_parts: dict[str, Any] = {}
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
                        _group_fields(specs, indices, initial, components, data_parts if group == "Data" else None)
                        if group == "Training":
                            _grader_box(app)
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="form-status")
            yaml_preview = gr.Code(language="yaml", label="config.yaml: what differs from the defaults (live)", interactive=False,
                                   elem_id="yaml-preview")
            with gr.Accordion("The whole config, every default included", open=False):
                yaml_full = gr.Code(language="yaml", interactive=False, show_label=False, elem_id="yaml-full")
            download = gr.DownloadButton("Download the YAML", elem_id="download-yaml")
            plan_view = gr.Markdown(elem_id="plan")
    return Form(components, preset, upload_yaml, data_parts["data_file"], data_parts["validation_file"], data_parts["detected"], data_parts["preview_rows"],
                data_parts["check_data"], data_parts["data_report"], status, yaml_preview, yaml_full, download, gr.State(None), plan_view,
                gr.State(None))


def _group_fields(specs: list[FieldSpec], indices: list[int], initial: list, components: list, data_parts: dict | None) -> None:
    """One tab of the form: its fields, the advanced ones folded away; the Data tab also gets the upload and report."""
    if data_parts is not None:
        with gr.Row():
            data_parts["data_file"] = gr.File(label="Upload training data (.jsonl, .csv, .parquet)",
                                              file_types=[".jsonl", ".json", ".csv", ".parquet"], type="filepath",
                                              elem_id="upload-data")
            data_parts["validation_file"] = gr.File(label="Upload validation data (optional)", type="filepath",
                                                    file_types=[".jsonl", ".json", ".csv", ".parquet"],
                                                    elem_id="upload-validation")
        data_parts["detected"] = gr.Markdown(elem_id="data-detected")
        data_parts["preview_rows"] = gr.Dataframe(label="First rows", interactive=False, wrap=True, elem_id="data-preview")
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
    if data_parts is not None:
        data_parts["check_data"] = gr.Button("Check the data", elem_id="check-data")
        data_parts["data_report"] = gr.Textbox(label="Data report", lines=14, interactive=False, elem_id="data-report")


def _grader_box(app: App) -> None:
    """Try a grader on a sample answer before paying for a run (what `trainer grade` does for a file of answers)."""
    with gr.Accordion("Try this grader", open=False, elem_id="try-grader"):
        grader = gr.Code(language="yaml", label="A grader (one entry of the graders list)", elem_id="try-grader-grader",
                         value="type: string_check\nname: correct\noperation: eq\ninput: '{{ sample.output_text }}'\nreference: '{{ item.answer }}'\n")
        with gr.Row():
            answer = gr.Textbox(label="Sample answer (sample.output_text)", lines=3, elem_id="try-grader-answer")
            item = gr.Textbox(label="Item (JSON: the record's fields)", lines=3, value='{"answer": "Paris"}', elem_id="try-grader-item")
        score = gr.Button("Grade it", elem_id="try-grader-run")
        result = gr.Markdown(elem_id="try-grader-result")
    score.click(app.try_grader, [grader, answer, item], result, api_name="try_grader")


def _run_tab() -> RunTab:
    with gr.Tab("Run", elem_id="tab-run"):
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="start")
            stop = gr.Button("Stop (saves a checkpoint)", elem_id="stop")
            resume = gr.Button("Resume", elem_id="resume")
        job_status = gr.Markdown(elem_id="job-status")
        progress = gr.Markdown(elem_id="job-progress")
        curve = gr.Plot(label="Loss", elem_id="loss-curve")
        log = gr.Textbox(label="Log (last lines)", lines=14, max_lines=14, interactive=False, autoscroll=True, elem_id="job-log")
        queue = gr.Dataframe(headers=["job", "kind", "status", "run directory"], label="Jobs", interactive=False, elem_id="queue")
        timer = gr.Timer(1.0)
    return RunTab(start, stop, resume, job_status, progress, curve, gr.State(None), log, queue, timer)


def _results_tab(app: App) -> ResultsTab:
    runs = app.finished_runs()
    with gr.Tab("Results", elem_id="tab-results"):
        with gr.Row():
            run_choice = gr.Dropdown(choices=runs, value=runs[0] if runs else None, label="Run", allow_custom_value=True, elem_id="run-choice")
            refresh_runs = gr.Button("Refresh", elem_id="refresh-runs")
            evaluate = gr.Button("Evaluate (base, few-shot, retrieval, tuned)", elem_id="evaluate")
            zip_button = gr.DownloadButton("Download the run (zip)", elem_id="download-run")
            export = gr.Button("Export (GGUF + Ollama Modelfile)", elem_id="export")
        report = gr.Markdown(elem_id="report")
        with gr.Row():
            export_files = gr.File(label="GGUF and Modelfile", file_count="multiple", interactive=False, elem_id="export-files")
            use_it = gr.Markdown(elem_id="use-it")
        with gr.Accordion("Serve (an OpenAI-compatible API for one or several runs)", open=True, elem_id="serve-box"):
            with gr.Row():
                serve_runs = gr.Dropdown(choices=runs, value=runs[:1], multiselect=True, allow_custom_value=True,
                                         label="Runs to serve together", info="LoRA runs on one base share one copy of it; "
                                         "clients choose a run by its model name.", elem_id="serve-runs", scale=3)
                serve = gr.Button("Serve", variant="primary", elem_id="serve", scale=1)
                stop_serving = gr.Button("Stop serving", elem_id="stop-serving", scale=1)
            serve_status = gr.Markdown(app.serve_status(), elem_id="serve-status")
            serve_timer = gr.Timer(2.0)
        chatbot = gr.Chatbot(label="Chat with the fine-tuned model", elem_id="chatbot", height=360)
        message = gr.Textbox(label="Your message", elem_id="chat-input")
    return ResultsTab(run_choice, refresh_runs, evaluate, zip_button, export, report, export_files, use_it, serve_runs, serve,
                      stop_serving, serve_status, serve_timer, chatbot, message)


def _service_tab() -> None:
    """The Jobs tab: a `trainer api` service's jobs (ui/service.py), listed, followed (every 5 s) and cancelled."""
    from ui import service

    fixed = service.fixed_url()
    with gr.Tab("Jobs", elem_id="tab-jobs"):
        gr.Markdown("The fine-tuning jobs of a `trainer api` service (OpenAI's fine-tuning API, docs/coming-from-openai.md): "
                    "give its URL and your API key, list your jobs, follow one, cancel it.")
        with gr.Row():
            url = gr.Textbox(label="Service URL", value=fixed or "http://127.0.0.1:8000/v1", interactive=fixed is None, elem_id="service-url")
            key = gr.Textbox(label="API key", type="password", elem_id="service-key")
            refresh = gr.Button("List jobs", elem_id="service-list")
        status = gr.Markdown(elem_id="service-status")
        table = gr.Dataframe(headers=service.JOB_COLUMNS, interactive=False, elem_id="service-jobs")
        with gr.Row():
            job = gr.Textbox(label="Job (click its row, or type its id)", elem_id="service-job")
            show = gr.Button("Show", elem_id="service-show")
            cancel = gr.Button("Cancel job", variant="stop", elem_id="service-cancel")
        summary = gr.Markdown(elem_id="service-summary")
        events = gr.Dataframe(headers=service.EVENT_COLUMNS, label="Events (newest first)", interactive=False, elem_id="service-events")
        timer = gr.Timer(5.0)

    def picked(event: gr.SelectData) -> str:
        row = event.row_value if isinstance(event.row_value, list) else []
        return str(row[0]) if row else gr.skip()

    refresh.click(service.listed, [url, key], [table, status])
    table.select(picked, None, job).then(service.shown, [url, key, job], [summary, events])
    show.click(service.shown, [url, key, job], [summary, events])
    cancel.click(service.cancelled, [url, key, job], [summary, events])
    timer.tick(lambda u, k, j: service.shown(u, k, j) if j.strip() else (gr.skip(), gr.skip()), [url, key, job], [summary, events],
               show_progress="hidden")


# --- events --------------------------------------------------------------------------------------------------------

def _form_inputs(form: Form) -> list:
    return [*form.fields, form.shown_problems]


def _form_outputs(form: Form) -> list:
    return [form.yaml_preview, form.yaml_full, form.status, form.download, form.runnable, form.shown_problems, *form.fields]


def _refresher(app: App) -> Callable[..., list]:
    """The event that re-checks the form: YAML preview, problems beside the fields, the runnable YAML.

    A field is sent an update only when its problem appeared or went: an update to the box being typed in, arriving
    between two keys, must not race the typing (what the boxes hold is never sent back to them)."""
    specs = app.specs

    def refresh(*inputs: Any) -> list:
        *values, shown = inputs
        preview, problems, runnable = app.check(list(values))
        path = None
        if runnable is not None:
            path = app.ws.root / ".ui-config.yaml"
            path.write_text(preview, encoding="utf-8")
        updates = [gr.update(info=("⚠ " + problems[s.key]) if s.key in problems else _help(s))
                   if shown is None or problems.get(s.key) != shown.get(s.key) else gr.skip() for s in specs]
        return [app.short_yaml(preview), preview, _status(problems), gr.update(value=str(path) if path else None), runnable,
                problems, *updates]

    return refresh


def _status(problems: dict[str, str]) -> str:
    return "**The config is valid.**" if not problems else "**Fix these before training:**\n" + "\n".join(
        f"- `{k or 'config'}`: {m}" for k, m in problems.items())


def _wire_form(app: App, demo: gr.Blocks, form: Form) -> None:
    components, inputs, outputs, refresh = form.fields, _form_inputs(form), _form_outputs(form), _refresher(app)
    for component in components:  # what the user types; filling the form in code refreshes once, below
        # always_last: a key pressed while the previous check runs is checked after it (Gradio's default, "once",
        # drops it, and the YAML kept "runs/my-recipe-experiment-" while the box showed "...-80")
        component.input(refresh, inputs, outputs, show_progress="hidden", trigger_mode="always_last")
    demo.load(refresh, inputs, outputs)
    # the plan follows the config: recomputed for the newest valid config only, however fast the fields change
    form.runnable.change(app.plan, form.runnable, form.plan, trigger_mode="always_last", show_progress="hidden")
    form.preset.input(lambda name: app.preset_values(name), form.preset, components).then(refresh, inputs, outputs)
    form.upload_yaml.upload(lambda path: app.load_yaml(path), form.upload_yaml, components).then(refresh, inputs, outputs)


def _wire_data(app: App, form: Form) -> None:
    specs, components, inputs, outputs, refresh = app.specs, form.fields, _form_inputs(form), _form_outputs(form), _refresher(app)
    train_index = next(i for i, s in enumerate(specs) if s.key == "data.train")
    validation = components[next(i for i, s in enumerate(specs) if s.key == "data.validation")]
    column_indices = [i for i, s in enumerate(specs) if s.path[:2] == ("data", "columns")]
    shown = [components[train_index], form.detected, form.preview_rows, *[components[i] for i in column_indices]]

    def data_shown(source: str) -> list:
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

    def saved(path: str) -> str:
        try:
            return app.ws.relative(app.ws.save_upload(path))
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def data_uploaded(path: str, validation_now: str) -> list:
        shown_now = data_shown(saved(path))
        kept, note = app.validation_after_upload(validation_now)
        return [*shown_now[:1], shown_now[1] + (f"\n\n{note}" if note else ""), *shown_now[2:], kept]

    def validation_uploaded(path: str) -> tuple[str, str]:
        source = saved(path)
        try:
            _, detection, _, _ = app.inspect_data(source)
        except (ValueError, UserError, OSError) as exc:
            return source, f"**Could not read the validation data:** {exc.render() if isinstance(exc, UserError) else exc}"
        return source, f"**Validation data `{source}`:** {detection}."

    def report(runnable: str | None) -> str:
        return app.data_report(runnable) if runnable else "Fix the config first."

    form.data_file.upload(data_uploaded, [form.data_file, validation], [*shown, validation], api_name="upload_data").then(
        refresh, inputs, outputs).then(report, form.runnable, form.data_report)
    form.validation_file.upload(validation_uploaded, form.validation_file, [validation, form.detected],
                                api_name="upload_validation").then(refresh, inputs, outputs).then(report, form.runnable, form.data_report)
    train = components[train_index]
    assert isinstance(train, gr.Textbox)  # data.train is text
    train.blur(data_shown, train, shown)
    form.check_data.click(report, form.runnable, form.data_report, api_name="data_report")


def _wire_run(app: App, form: Form, tab: RunTab, job_state: gr.State) -> None:
    def started(*values: Any) -> tuple[str, str, str, str]:
        """Start what the boxes hold at the click, checked again (not the last checked YAML, which may be a key
        behind), and show that YAML: the preview and the run agree."""
        preview, problems, runnable = app.check(list(values))
        if runnable is None:
            raise gr.Error("The config has problems; they are listed beside the form.")
        return app.start(runnable), app.short_yaml(preview), preview, _status(problems)

    tab.start.click(started, form.fields, [job_state, form.yaml_preview, form.yaml_full, form.status], api_name="start")
    tab.stop.click(lambda job: app.jobs.stop(job).id if job else None, job_state, job_state, api_name="stop")
    tab.resume.click(lambda job: app.jobs.resume(job).id if job else None, job_state, job_state, api_name="resume")

    def tick(job: str | None, curve_shown: tuple | None) -> tuple:
        from trainer.rundir import loss_figure

        view = app.job_view(job)
        losses, rewards = view["losses"], view["rewards"]
        now = (view.get("job"), len(losses), losses[-1] if losses else None, len(rewards))
        curve: Any = gr.skip()
        if now != curve_shown:
            series = {name: ([r["step"] for r in losses if r["series"] == name], [r["loss"] for r in losses if r["series"] == name])
                      for name in ("training", "validation")}
            named = {r["series"]: None for r in rewards}  # in the order first logged
            reward_series = {name: ([r["step"] for r in rewards if r["series"] == name], [r["reward"] for r in rewards if r["series"] == name])
                             for name in named}
            curve = loss_figure(series["training"], series["validation"], reward_series or None) if losses or rewards else None
        return view.get("job"), view["status"], view["progress"], curve, now, view["log"], view["queue"]

    shown = [job_state, tab.job_status, tab.progress, tab.curve, tab.curve_shown, tab.log, tab.queue]
    tab.timer.tick(tick, [job_state, tab.curve_shown], shown, show_progress="hidden")
    gr.Button("Refresh status", visible=False).click(tick, [job_state, tab.curve_shown], shown, api_name="status")


def _wire_results(app: App, tab: ResultsTab, job_state: gr.State) -> None:
    tab.refresh_runs.click(lambda: gr.update(choices=app.finished_runs()), None, tab.run_choice)
    tab.run_choice.change(app.report, tab.run_choice, tab.report, api_name="report")
    tab.evaluate.click(app.evaluate, tab.run_choice, job_state, api_name="evaluate")
    tab.run_choice.change(lambda run: app.archive(run) if run else None, tab.run_choice, tab.zip_button)
    exported = [tab.export_files, tab.use_it]
    tab.run_choice.change(lambda run: app.exported(run) if run else ([], ""), tab.run_choice, exported)
    tab.refresh_runs.click(lambda run: app.exported(run) if run else ([], ""), tab.run_choice, exported)
    tab.export.click(app.export, tab.run_choice, job_state, api_name="export")
    _wire_serving(app, tab)
    tab.message.submit(app.reply, [tab.run_choice, tab.chatbot, tab.message], tab.chatbot, api_name="chat").then(
        lambda: "", None, tab.message)


def _wire_serving(app: App, tab: ResultsTab) -> None:
    """Serve the picked runs, stop, and a status that follows what is served. The runs to serve follow the run chosen
    above while at most one is picked; a set of several, picked on purpose, stays as it is."""
    def offered(run: str | None, picked: list[str] | None) -> Any:
        chosen = list(picked or [])
        if len(chosen) <= 1:
            chosen = [run] if run else chosen
        return gr.update(choices=sorted({*app.finished_runs(), *chosen}), value=chosen)

    tab.run_choice.change(offered, [tab.run_choice, tab.serve_runs], tab.serve_runs)
    tab.refresh_runs.click(offered, [tab.run_choice, tab.serve_runs], tab.serve_runs)
    tab.serve.click(app.serve, tab.serve_runs, tab.serve_status, api_name="serve")
    tab.stop_serving.click(app.stop_serving, None, tab.serve_status, api_name="stop_serving")
    tab.serve_timer.tick(app.serve_status, None, tab.serve_status, show_progress="hidden")


def _api(app: App) -> None:
    """Scripting (gradio_client): the same operations on YAML text, without the form."""
    specs = app.specs

    def checked(config_yaml: str) -> tuple[str | None, dict, str | None]:
        """(preview, problems, runnable YAML or None) of YAML text, through the same check as the form."""
        from trainer.config import parse_config

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


# --- rendering -----------------------------------------------------------------------------------------------------

def _component(spec: FieldSpec, value: Any) -> Field:
    info = spec.description
    common: dict[str, Any] = dict(label=spec.title, info=info, elem_id="field-" + spec.key.replace(".", "-"))
    if spec.kind in ("dropdown",):
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    if spec.kind == "multiselect":
        return gr.Dropdown(choices=list(spec.choices), value=value, multiselect=True, **common)
    if spec.kind in ("checkbox", "toggle"):
        return gr.Checkbox(value=bool(value), label=spec.title if spec.kind == "checkbox" else f"Use: {spec.title}", info=info,
                           elem_id=common["elem_id"])
    if _is_slider(spec):  # a share or a probability: a slider over its bounds
        assert spec.minimum is not None and spec.maximum is not None  # _is_slider checked them
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=0.001, value=value, **common)
    if spec.kind in ("integer", "number") and spec.nullable:  # may be left unset: a text box (ui.form.number_text)
        return gr.Textbox(value=number_text(value) if not isinstance(value, str) else value,
                          placeholder="empty: not set", **{**common, "info": f"{info} {_bounds(spec)}".strip()})
    if spec.kind in ("integer", "number"):
        # Open-ended numbers show their bounds in the help text rather than as gr.Number limits: Gradio would refuse
        # an out-of-range number itself, in its own words, before the validator could say what is allowed.
        bounds = _bounds(spec)
        return gr.Number(value=value, precision=0 if spec.kind == "integer" else None,
                         **{**common, "info": f"{info} {bounds}".strip()})
    if spec.kind == "yaml":
        return gr.Textbox(value=value or "", lines=6, max_lines=40, placeholder="YAML: a list, one `- type: ...` per grader", **common)
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
    shown = spec.kind in ("integer", "number") and not _is_slider(spec)  # the bounds, as _component shows them
    return f"{spec.description} {_bounds(spec)}".strip() if shown else spec.description
