"""trainer's web UI (Gradio Blocks): a form that writes the YAML, runs it, shows it, and lets you talk to the result.

Run it with `trainer ui` (or `make ui`), or as a Hugging Face Space (app_file: ui/app.py). The form is generated
from trainer/config/schema.json (ui/form.py); every run is `trainer --config` in its own process (ui/jobs.py);
paths typed into the form are checked against the work directory (ui/workspace.py).
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # started as a script (Hugging Face Spaces: python ui/app.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr
import yaml

from trainer.config import parse_config
from trainer.config.presets import PRESETS, preset_text
from trainer.config.schema import load_schema
from trainer.data.records import Record
from trainer.errors import UserError
from trainer.generate import Loaded
from ui.form import FieldSpec, differences, fields, from_config, to_document
from ui.jobs import JobManager
from ui.serving import ServeManager
from ui.workspace import Workspace, path_keys

_LABELS = {"cpu-demo": "CPU demo (SmolLM2-135M, LoRA)", "gpu-lora": "GPU LoRA (Llama 3.2 3B)",
           "gpu-qlora": "GPU QLoRA (Llama 3.1 8B)", "full": "Full fine-tune (Llama 3.2 1B)"}
PRESET_LABELS = {name: _LABELS.get(name, name) for name in PRESETS}  # every shipped preset, named for people
_DEFAULTS = parse_config("model: {name_or_path: m}\ndata: {train: t}\ntraining: {epochs: 1}\n", "defaults", check_files=False).to_dict()
_PRESET_VALIDATION = {v for name in PRESETS if isinstance(v := yaml.safe_load(preset_text(name)).get("data", {}).get("validation"), str)}
REPO = Path(__file__).resolve().parent.parent
RUN_FILES = ("config.yaml", "README.md", "summary.json", "metrics.jsonl", "loss.png", "eval.md", "eval.json", "eval.png")


# The plan and the data report are fixed-width text: wrapped, never cut at the right edge; tables of numbers (the
# evaluation report) in a fixed-width font, so their columns line up.
CSS = """
#plan pre, #plan code { white-space: pre-wrap; word-break: break-word; }
#report table, #report td, #report th { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
"""


class App:
    """The UI's state and the functions behind its events (plain methods, so tests can call them directly)."""

    def __init__(self, workspace: Workspace | None = None, schema: dict | None = None):
        self.ws = workspace or Workspace.from_env()
        self.schema = schema or load_schema()
        self.specs: list[FieldSpec] = fields(self.schema)
        self.paths = path_keys(self.schema)
        self.jobs = JobManager(self.ws.root)
        self.serving = ServeManager(self.ws.root)  # the runs served from the Results tab (ui/serving.py)
        self._loaded: dict[str, Loaded] = {}
        self._read: dict[tuple, str | None] = {}  # the data files checked lately (by version), and what was unreadable
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
            config = parse_config(yaml.safe_dump(resolved, sort_keys=False), "form")
            runnable = config.to_yaml()
        except UserError as exc:
            for problem in exc.problems:
                problems.setdefault(problem.path, problem.message)
            runnable = None
        else:
            for field, message in python_graders_refused(config):
                problems.setdefault(field, message)
            if config.data.on_invalid == "error":  # as `trainer` would refuse the file, so does the form
                for field, ref in (("data.train", config.data.train), ("data.validation", config.data.validation)):
                    if ref and (broken := self._unreadable(ref)):
                        problems.setdefault(field, broken)
        return preview, problems, None if problems else runnable

    def _unreadable(self, ref: str) -> str | None:
        """What is unreadable in a local data file or folder (lines that are not records), or None; read once per
        version of the file (a form re-checks on every key), and not at all for Hub data sets."""
        from trainer.data.records import data_files, read_records

        try:
            files = data_files(ref)
        except (UserError, OSError):
            return None  # missing: parse_config said so already
        version = (ref, tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()))
        if version not in self._read:
            records, problems = read_records(ref)
            total = len(records) + len(problems)
            if len(self._read) >= 8:
                self._read.clear()
            self._read[version] = None if not problems else (
                f"{len(problems)} of {total} records cannot be read (first: {problems[0].location()}: {problems[0].message}); "
                "nothing would be trained. Fix them (Check the data lists each), or set data.on_invalid: skip")
        return self._read[version]

    def try_grader(self, grader_yaml: str, answer: str, item_json: str) -> str:
        """The "Try this grader" box: a grader (YAML or JSON) on one answer and one item, with trainer.graders as a run
        grades; the score, a multi grader's sub-scores and any error, as Markdown. A python grader only where allowed."""
        from trainer.graders import grade, parse_grader
        from trainer.graders.objects import Grader

        try:
            obj = yaml.safe_load(grader_yaml or "")
            item = json.loads(item_json) if (item_json or "").strip() else {}
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            return f"**Cannot read it:** {exc}"
        if not isinstance(obj, dict) or not isinstance(item, dict):
            return "**Cannot read it:** the grader is one grader object (type: ..., name: ...), and the item a JSON object."
        try:
            grader: Grader = parse_grader(obj)
        except UserError as exc:
            return "**The grader has problems:**\n\n" + "\n".join(f"- {p}" for p in exc.problems)
        if not python_graders_allowed() and has_python(grader):
            return f"**Refused:** {PYTHON_REFUSED}"
        result = grade(grader, {"output_text": answer or ""}, item)
        lines = [f"**Score: {result.score:.4g}**" + ("" if result.passed is None else f" ({'passed' if result.passed else 'not passed'})")]
        lines += [f"- {name}: {part.score:.4g}" + (f" (error: {part.error})" if part.error else "") for name, part in result.parts.items()]
        if result.error:
            lines.append(f"\n**Error** (the score counts as 0): {result.error}")
        return "\n".join(lines)

    def short_yaml(self, preview: str) -> str:
        """The preview as people read it: what differs from trainer's defaults (the model and data always shown)."""
        try:
            shown = yaml.safe_load(preview)
        except yaml.YAMLError:
            return preview
        if not isinstance(shown, dict):
            return preview
        required = (("model", "name_or_path"), ("data", "train"), ("training", "epochs"), ("training", "max_steps"))  # one of the last two
        changed = differences(shown, _DEFAULTS, keep=required)
        return yaml.safe_dump(changed, sort_keys=False, allow_unicode=True) if changed else "# every setting is at its default\n"

    def load_yaml(self, path: str) -> list:
        """An uploaded YAML (trainer's or AutoTrain's) -> form values."""
        from trainer.config import load_config

        config = load_config(path, check_files=False)
        return from_config(self.specs, config.to_dict())

    # --- data ---
    def inspect_data(self, source: str) -> tuple[list[dict], str, list[str], set[str]]:
        """(first rows, what was detected, the columns found, the column settings the format needs) for a data file."""
        from trainer.data.formats import DEFAULT_COLUMNS, detect_format
        from trainer.data.preference import detect_pairs, pair_columns
        from trainer.data.records import read_records

        resolved, why = self.ws.resolve(source, "data")
        if why:
            raise ValueError(f"data.train {why}")
        assert resolved is not None
        records, problems = read_records(resolved)
        if not records:
            raise ValueError(f"{source}: no readable records" + (f" ({problems[0]})" if problems else ""))
        columns = sorted({k for r in records[:200] for k in r.row})
        rows = [{k: json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v for k, v in r.row.items()} for r in records[:5]]
        pairs = detect_pairs(records, pair_columns({}))
        if pairs is not None:  # preference data: each pair as its prompt, the chosen answer and the rejected one
            layout, hits = pairs
            readable = [_readable_pair(record) for record in records[:5]]  # first, and in place of raw columns of the same name
            rows = [{**shown, **{k: v for k, v in row.items() if k not in shown}} for row, shown in zip(rows, readable)]
            detection = f"preference pairs ({layout} layout) in {hits} of the first {min(len(records), 100)} rows: train them with objective dpo or orpo"
            return rows, f"{detection}; {len(records)} records, {len(problems)} unreadable", columns, {"prompt", "chosen", "rejected", "system"}
        try:
            fmt, detection = detect_format(records, {})
            needed = set(DEFAULT_COLUMNS[fmt])
            texts, system = _readable(records[:5], fmt)
            rows = [{"conversation": text, **row} for row, text in zip(rows, texts)]
            if system:  # said once, not as the first (cut-off) line of every row
                detection += f"; every example shown has the same system prompt: {system[:300]!r}" + ("..." if len(system) > 300 else "")
        except UserError as exc:  # unknown column names: every mapping is offered
            detection, needed = exc.problems[0].message, {k for names in DEFAULT_COLUMNS.values() for k in names}
        return rows, f"{detection}; {len(records)} records, {len(problems)} unreadable", columns, needed

    def validation_after_upload(self, validation: str | None) -> tuple[str, str]:
        """(data.validation, a note) once the user uploads training data: a preset's own validation file goes (it
        belongs to the preset's data, not to theirs), and the note says what validates the run instead."""
        if not validation or validation.strip() not in _PRESET_VALIDATION:
            return validation or "", ""
        return "", (f"The preset's validation file `{validation.strip()}` was removed: it belongs to the preset's data. "
                    "A share of your data is held out instead (Validation split); upload a validation file to use your own.")

    def data_report(self, runnable_yaml: str) -> str:  # includes the chat template's features (renders tools, ...)
        """The data report (`trainer data`): problems with their lines, token statistics, steps."""
        import subprocess

        path = self.ws.root / ".ui-data-check.yaml"
        path.write_text(runnable_yaml, encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "trainer", "data", "--config", str(path)], cwd=self.ws.root,
                              capture_output=True, text=True, timeout=600)
        return (done.stdout + ("\n" + done.stderr if done.stderr.strip() else "")).strip()

    def plan(self, runnable_yaml: str | None) -> str:
        """`trainer plan` of the form's config, as Markdown for the panel beside the form."""
        from trainer.plan import make_plan, render_plan

        if not runnable_yaml:
            return "The plan (parameters, memory, time, cost) appears once the config is valid."
        try:
            plan = make_plan(parse_config(runnable_yaml, "form"))
        except UserError as exc:
            return f"**No plan yet:** {exc.render()}"
        return "**Plan** (`trainer plan`: estimated before training)\n```\n" + render_plan(plan) + "\n```"

    # --- runs ---
    def start(self, runnable_yaml: str) -> str:
        config = parse_config(runnable_yaml, "form")
        job = self.jobs.submit(runnable_yaml, config.output.dir)
        return job.id

    def job_view(self, job_id: str | None) -> dict:
        jobs = self.jobs.poll()
        view: dict[str, Any] = {"queue": [[j.id, j.kind, j.status, self.ws.relative(j.run_dir)] for j in reversed(jobs)], "log": "",
                "progress": "", "losses": [], "rewards": [], "status": "no job yet"}
        job = next((j for j in jobs if j.id == job_id), jobs[-1] if jobs else None)
        if job is None:
            return view
        view["job"] = job.id
        view["status"] = f"{job.id}: {job.status}" + (f" (exit code {job.returncode})" if job.returncode not in (None, 0) else "")
        view["log"] = self.jobs.log(job.id)
        done = self.jobs.progress(job.id)
        if done:
            view["progress"] = f"step {done[0]} of {done[1]} ({done[0] / max(done[1], 1):.0%})"
        rows = self.jobs.losses(job.id)
        view["losses"] = [{"step": r["step"], "loss": r[k], "series": name} for r in rows
                          for k, name in (("loss", "training"), ("eval_loss", "validation")) if k in r]
        # a grpo run's mean reward per logged step: in all ("reward") and per grader ("reward_<name>", not the spreads)
        view["rewards"] = [{"step": r["step"], "reward": v, "series": k} for r in rows for k, v in r.items()
                           if k.startswith("reward") and not k.endswith("_std") and isinstance(v, (int, float))]
        return view

    def finished_runs(self) -> list[str]:
        # a relative run_dir is inside the work directory; an absolute one stays as it is
        return sorted({self.ws.relative(j.run_dir) for j in self.jobs.jobs() if (self.ws.root / j.run_dir / "model").is_dir()})

    def run_path(self, run: str) -> Path:
        resolved, why = self.ws.resolve(run, "output")
        if why:
            raise ValueError(f"run {why}")
        assert resolved is not None
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

    def export(self, run: str) -> str:
        """Queue `trainer export --to ollama` for the run: the GGUF and the Modelfile land in <run>/export."""
        path = self.run_path(run)
        return self.jobs.submit((path / "config.yaml").read_text(encoding="utf-8"), str(path), kind="export").id

    def exported(self, run: str) -> tuple[list[str], str]:
        """The run's GGUF files and Modelfile, offered for download, and how to use them (serve, Ollama)."""
        path = self.run_path(run)
        files = sorted((path / "export").glob("*.gguf")) + [p for p in [path / "export" / "Modelfile"] if p.is_file()]
        staging = self.ws.root / ".ui-downloads" / f"{path.name}-export"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        offered = []
        for file in files:  # served from the download folder; a hard link costs no space where the disk allows it
            try:
                os.link(file, staging / file.name)
            except OSError:
                shutil.copy2(file, staging / file.name)
            offered.append(str(staging / file.name))
        how = (f"**Serve it** (an OpenAI-compatible API on http://127.0.0.1:8000/v1):\n\n```\ntrainer serve --run {path}\n```\n")
        if files:
            from trainer.export.gguf import run_name

            how += f"\n**Ollama**: download the GGUF and the Modelfile into one folder, then `ollama create {run_name(path)} -f Modelfile`."
        else:
            how += "\nPress **Export** for a GGUF file (llama.cpp, LM Studio) and an Ollama Modelfile."
        return offered, how

    def serve(self, runs: list[str] | str | None) -> str:
        """Serve these finished runs with one `trainer serve` (stopping what was served); the status as Markdown.
        A bad choice is a message, not an error: no run picked, a run without a model, two runs of one name."""
        from trainer.serve.runs import expand_runs, run_names

        picked = [runs] if isinstance(runs, str) else [r for r in (runs or []) if r and r.strip()]
        if not picked:
            return "**Nothing to serve:** pick one or more finished runs first."
        port = os.environ.get("TRAINER_UI_SERVE_PORT", "").strip()
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            return f"**Cannot serve:** TRAINER_UI_SERVE_PORT={port!r} is not a port number (1 to 65535); fix it or unset it."
        paths = []
        for run in picked:
            try:
                path = self.run_path(run)
            except ValueError as exc:
                return f"**Cannot serve `{run}`:** {exc}"
            if not (path / "config.yaml").is_file() or not (path / "model").is_dir():
                return (f"**Cannot serve `{run}`:** it has no trained model yet ({path} holds no config.yaml and model/); "
                        "pick a finished run, or let its training finish.")
            paths.append(path)
        try:
            names = run_names(expand_runs(paths))
        except UserError as exc:
            return f"**Cannot serve these runs:** {exc.render()}"
        self.serving.start(picked, paths, names)
        return self.serving.status()

    def serve_status(self) -> str:
        return self.serving.status()

    def stop_serving(self) -> str:
        self.serving.stop()
        return self.serving.status()

    def shutdown(self) -> None:
        """What the UI started and owns ends with it: the served runs (training jobs go on: ui/jobs.py)."""
        self.serving.stop()

    def reply(self, run: str, history: list[dict], message: str, max_new_tokens: int = 256) -> Iterator[list[dict]]:
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


PYTHON_REFUSED = ("python graders run code from the config on this server, and this UI does not allow them; the operator can set "
                  "TRAINER_UI_ALLOW_PYTHON_GRADERS=1 (docs/web-ui.md), or run the config with `trainer` on your machine.")


def python_graders_allowed() -> bool:
    return os.environ.get("TRAINER_UI_ALLOW_PYTHON_GRADERS") == "1"


def has_python(grader: Any) -> bool:
    """Whether a grader is a python grader or holds one (a multi grader's)."""
    from trainer.graders.objects import Multi, Python

    return isinstance(grader, Python) or (isinstance(grader, Multi) and any(has_python(g) for g in grader.graders.values()))


def python_graders_refused(config: Any) -> Iterator[tuple[str, str]]:
    """(field key, why) for each list of graders holding a python grader, unless the operator allows them: a form is
    filled by whoever reaches the page (a Space: anyone), and a python grader is code the server would run."""
    if python_graders_allowed():
        return
    from trainer.config.rules import grader_lists
    from trainer.reinforcement.rewards import read_rewards

    for where, entries in grader_lists(config):
        if any(has_python(r.grader) for r in read_rewards(entries)[0]):
            yield ".".join(where), PYTHON_REFUSED


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Gradio may hand back [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def build(app: App | None = None) -> gr.Blocks:
    """The Gradio Blocks of the UI for `app` (ui/layout.py lays them out and wires their events)."""
    from ui.layout import build_blocks

    return build_blocks(app or App())


def launch(host: str = "127.0.0.1", port: int = 7860) -> None:
    app = App()
    auth = os.environ.get("TRAINER_UI_AUTH")
    credentials = tuple(auth.split(":", 1)) if auth and ":" in auth else None
    # Gradio asks its own page once it listens, with a 3 s timeout and no retry after a timeout, and stops with "When
    # localhost is not accessible, a shareable link must be created" when a busy machine answers later (seen with
    # training jobs on 2 cores); `_frontend=False` skips that probe, where this Gradio has the parameter.
    probe = {"_frontend": False} if "_frontend" in inspect.signature(gr.Blocks.launch).parameters else {}
    _stop_with(app)
    try:
        build(app).queue(default_concurrency_limit=2).launch(
            **probe, css=CSS, server_name=host, server_port=port, auth=credentials, max_file_size=f"{app.ws.max_upload_mb:.0f}mb",
            allowed_paths=[str(app.ws.root / ".ui-downloads"), str(app.ws.root / ".ui-config.yaml")], show_error=True,
        )
    finally:  # Ctrl-C: Gradio closes and launch returns
        app.shutdown()


def _stop_with(app: App) -> None:
    """SIGTERM (a service manager, a container stopping) ends what the app serves, then the UI, as the signal would."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        return

    def stop(signum: int, frame: object) -> None:
        app.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    on_space = bool(os.environ.get("SPACE_ID"))
    launch("0.0.0.0" if on_space else os.environ.get("TRAINER_UI_HOST", "127.0.0.1"), int(os.environ.get("PORT", "7860")))


def _readable(records: list[Record], fmt: str) -> tuple[list[str], str | None]:
    """The first records as people read a conversation (tool calls as name(arguments), reasoning marked), and the
    system prompt they all share, left out of each (else every row of the preview starts with the same cut-off line)."""
    from dataclasses import replace

    from trainer.data.conversations import readable
    from trainer.data.formats import columns_for, to_example

    examples, problems = zip(*(to_example(record, fmt, columns_for(fmt, {}), "assistant") for record in records))
    systems = {tuple(m.content for m in e.messages if m.role == "system") if e and e.messages else None for e in examples}
    shared = next(iter(systems)) if len(systems) == 1 and len(records) > 1 else None
    out = []
    for example, found in zip(examples, problems):
        if example and shared and example.messages:
            example = replace(example, messages=tuple(m for m in example.messages if m.role != "system"))
        out.append(readable(example) if example else "; ".join(p.message for p in found))
    return out, "\n".join(shared) if shared else None


def _readable_pair(record: Record) -> dict:
    """A preference record as three readable columns: prompt, chosen and rejected (or the problems that stop it)."""
    from trainer.data.preference import pair_columns, readable_pair, to_pair

    pair, problems = to_pair(record, pair_columns({}))
    if pair is None:
        return {"prompt": "; ".join(p.message for p in problems), "chosen": "", "rejected": ""}
    prompt, chosen, rejected = readable_pair(pair)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
