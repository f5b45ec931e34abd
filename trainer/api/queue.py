"""The job queue: one training at a time, each `trainer --config` in a child process (trainer/childproc.py) whose
config.yaml the service wrote into the job's folder.

A job goes validating_files -> queued -> running -> succeeded | failed | cancelled; a client may pause a queued or
running one (paused) and resume it (queued again, continuing from the checkpoint the pause wrote). Validation reads the files as
trainer would train on them (its file:line problems become the job's error) in a thread of the service; training
runs in a child that outlives the service. What the queue learns of a child comes from files: events from the run's
metrics.jsonl, the outcome from trainer's exit code (trainer/errors.py):

  0             succeeded
  3             cancelled when a cancel was asked for, paused when a pause was (resume queues it with --resume);
                otherwise something else stopped it (a shutdown of the machine sends SIGTERM): it saved a checkpoint
                and is queued again to resume
  none written  the child was killed (kill -9, the machine went down): queued again to resume from its newest
                checkpoint (`trainer --config ... --resume`), up to MAX_RESTARTS times
  anything else failed

A child that still runs when the service starts again (only the service was restarted) is adopted, not restarted.
"""
from __future__ import annotations

import csv
import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainer import childproc
from trainer.api.store import FileRow, JobRow, Store
from trainer.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, UserError

MAX_RESTARTS = 3
TICK_S = 0.5


def run_dir(job: JobRow) -> Path:
    return Path(job.folder) / "run"


def model_name(job: JobRow) -> str:
    """OpenAI's ft:<base>:<owner>:<suffix>:<id>."""
    return f"ft:{job.model}:{job.owner}:{job.suffix or ''}:{job.id[-8:]}"


class JobQueue:
    def __init__(self, store: Store, data_dir: Path):
        self.store, self.data_dir = store, data_dir
        self.validations = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer-api-validate")
        self.validating: set[str] = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="trainer-api-queue", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop watching; a training child goes on (a restarted service adopts it)."""
        self.stopping.set()
        self.validations.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception as exc:  # a bug here must not end the queue: said, and tried again
                import traceback

                traceback.print_exception(exc)
            self.stopping.wait(TICK_S)

    def tick(self) -> None:
        jobs = self.store.active_jobs()
        for job in jobs:
            if job.status == "validating_files" and job.id not in self.validating:
                self.validating.add(job.id)
                self.validations.submit(self._validate, job)
            elif job.status == "running":
                self._watch(job)
        if not any(j.status == "running" for j in self.store.active_jobs()):
            queued = [j for j in self.store.active_jobs() if j.status == "queued"]
            if queued:
                self._start(queued[0])

    # --- the steps of a job ---
    def _validate(self, job: JobRow) -> None:
        try:
            problem = _data_problem(Path(job.folder) / "config.yaml", self._file_names(job))
            if problem is not None:
                self._fail(job, ("validating_files",), "invalid_training_file", problem, "training_file")
            elif self.store.set_status(job.id, ("validating_files",), status="queued"):
                self.store.add_event(job.id, "Files validated, moving job to queued state")
        finally:
            self.validating.discard(job.id)

    def _file_names(self, job: JobRow) -> dict[str, str]:
        """Stored path -> file id, to show trainer's problems with the names the client knows."""
        names = {}
        for file_id in (job.training_file, job.validation_file):
            row = self.store.file(job.owner, file_id) if file_id else None
            if row is not None:
                names[row.path] = row.id
        return names

    def _start(self, job: JobRow) -> None:
        folder = Path(job.folder)
        args = ["--config", str(folder / "config.yaml")] + (["--resume"] if job.resume else [])
        pid = childproc.start_trainer(args, folder / "exit_code", folder / "log.txt", folder)
        if not self.store.set_status(job.id, ("queued",), status="running", pid=pid):  # cancelled meanwhile
            childproc.stop(pid)
            return
        self.store.add_event(job.id, "Fine-tuning job resumed from its newest checkpoint" if job.resume else "Fine-tuning job started")

    def _watch(self, job: JobRow) -> None:
        folder = Path(job.folder)
        self._tell_metrics(job)
        if childproc.alive(job.pid, marker=str(folder)):
            return
        code = childproc.exit_code(folder / "exit_code")
        if code == EXIT_OK:
            self._succeed(job)
        elif job.cancel_requested and code in (EXIT_STOPPED, None):
            if self.store.set_status(job.id, ("running",), status="cancelled", finished_at=int(time.time()), pid=None):
                self.store.add_event(job.id, "Fine-tuning job cancelled")
        elif job.pause_requested and code in (EXIT_STOPPED, None):  # None: killed meanwhile, its newest checkpoint will do
            if self.store.set_status(job.id, ("running",), status="paused", resume=True, pid=None, pause_requested=False,
                                     estimated_finish=None):
                self.store.add_event(job.id, f"Fine-tuning job paused with a checkpoint at step {_checkpoint_step(run_dir(job))}; "
                                     "resume continues from there")
        elif code in (EXIT_STOPPED, None) and job.restarts < MAX_RESTARTS:
            if self.store.set_status(job.id, ("running",), status="queued", resume=True, pid=None, restarts=job.restarts + 1):
                why = "was stopped from outside" if code == EXIT_STOPPED else "ended without an exit code (the service or the machine was killed)"
                self.store.add_event(job.id, f"The training {why}; it is queued to resume from its newest checkpoint", level="warn")
        else:
            kind = "invalid_training_file" if code == EXIT_BAD_INPUT else "training_failed"
            self._fail(job, ("running",), kind, f"trainer exited with code {code}: {_log_tail(folder / 'log.txt')}", None)

    def _tell_metrics(self, job: JobRow) -> None:
        """New rows of metrics.jsonl as events; the estimated finish from the pace so far."""
        rows = childproc.read_jsonl(run_dir(job) / "metrics.jsonl")
        train_step, eval_step, last = job.train_step, job.eval_step, None
        for row in rows:
            step = int(row.get("step", 0))
            if "loss" in row and step > train_step:
                train_step, last = step, row
                data = {"step": step, "total_steps": row.get("total_steps"), "train_loss": row["loss"],
                        "learning_rate": row.get("lr"), "trained_tokens": row.get("trained_tokens")}
                # a reinforcement job's rewards, under trainer's metric names (reward, reward_std, reward_<grader>, ...)
                data |= {k: v for k, v in row.items() if k.startswith("reward") or k in ("grader_errors", "zero_spread_groups")}
                said = f", reward={row['reward']:.4f}" if isinstance(row.get("reward"), (int, float)) else ""
                self.store.add_event(job.id, f"Step {step}/{row.get('total_steps')}: training loss={row['loss']:.4f}{said}",
                                     kind="metrics", data=data)
            elif "eval_loss" in row and step > eval_step:
                eval_step = step
                self.store.add_event(job.id, f"Step {step}: validation loss={row['eval_loss']:.4f}", kind="metrics",
                                     data={"step": step, "valid_loss": row["eval_loss"]})
        if (train_step, eval_step) == (job.train_step, job.eval_step):
            return
        changes: dict[str, Any] = {"train_step": train_step, "eval_step": eval_step}
        timed = [r for r in rows if "loss" in r and "time" in r]
        if last is not None and len(timed) >= 2 and last.get("total_steps"):
            pace = (timed[-1]["time"] - timed[0]["time"]) / max(timed[-1]["step"] - timed[0]["step"], 1)
            changes["estimated_finish"] = int(time.time() + pace * (int(last["total_steps"]) - train_step))
        self.store.update_job(job.id, **changes)

    def _succeed(self, job: JobRow) -> None:
        from trainer.rundir import RunSummary

        summary = RunSummary.read(run_dir(job))
        result = self._result_file(job)
        name = model_name(job)
        if self.store.set_status(job.id, ("running",), status="succeeded", finished_at=int(time.time()), pid=None,
                                 fine_tuned_model=name, trained_tokens=summary.trained_tokens if summary else None,
                                 result_files=[result.id], estimated_finish=None):
            self.store.add_event(job.id, f"New fine-tuned model created: {name}")
            self.store.add_event(job.id, "The job has successfully completed")

    def _result_file(self, job: JobRow) -> FileRow:
        """The step metrics as a CSV in OpenAI's columns (trainer measures no token accuracy: those stay empty)."""
        rows: dict[int, dict[str, Any]] = {}
        for row in childproc.read_jsonl(run_dir(job) / "metrics.jsonl"):
            entry = rows.setdefault(int(row.get("step", 0)), {"step": int(row.get("step", 0))})
            if "loss" in row:
                entry["train_loss"] = row["loss"]
            if "eval_loss" in row:
                entry["valid_loss"] = row["eval_loss"]
            if "reward" in row:
                entry["train_reward"] = row["reward"]
        text = io.StringIO()
        columns = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
        if job.method.get("type") == "reinforcement":  # trainer's own column: the mean reward of the step's answers
            columns.append("train_reward")
        writer = csv.DictWriter(text, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[step] for step in sorted(rows))
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        path = self.data_dir / "files" / file_id
        path.write_text(text.getvalue(), encoding="utf-8")
        stored = FileRow(file_id, job.owner, "step_metrics.csv", "fine-tune-results", path.stat().st_size, int(time.time()), str(path))
        self.store.add_file(stored)
        return stored

    def _fail(self, job: JobRow, expected: tuple[str, ...], code: str, message: str, param: str | None) -> None:
        if self.store.set_status(job.id, expected, status="failed", finished_at=int(time.time()), pid=None,
                                 error={"code": code, "message": message, "param": param}):
            self.store.add_event(job.id, f"Fine-tuning job failed: {message}", level="error")

    # --- asked for by a client ---
    def cancel(self, job: JobRow) -> None:
        """A job not yet training ends at once; a training one is sent SIGTERM (it saves a checkpoint and exits 3) and
        is cancelled when its child has ended."""
        if self.store.set_status(job.id, ("validating_files", "queued", "paused"), status="cancelled", finished_at=int(time.time())):
            self.store.add_event(job.id, "Fine-tuning job cancelled")
        elif self._now(job).status == "running":
            self.store.update_job(job.id, cancel_requested=True)
            childproc.stop(job.pid)

    def pause(self, job: JobRow) -> None:
        """A queued job is paused at once; a training one is sent SIGTERM (it saves a checkpoint and exits 3) and is
        paused when its child has ended. The caller checked that the job is queued or running."""
        if self.store.set_status(job.id, ("queued",), status="paused"):
            self.store.add_event(job.id, "Fine-tuning job paused before it started")
        elif self._now(job).status == "running":
            self.store.update_job(job.id, pause_requested=True)
            childproc.stop(job.pid)

    def _now(self, job: JobRow) -> JobRow:
        """The job as stored now: the queue may have started it since the caller read it."""
        return self.store.job(job.id) or job

    def resume(self, job: JobRow) -> bool:
        """A paused job is queued again (in its place by creation, as the queue orders jobs); it continues from its
        newest checkpoint."""
        if not self.store.set_status(job.id, ("paused",), status="queued"):
            return False
        self.store.add_event(job.id, "Fine-tuning job resumed: queued to continue from its newest checkpoint")
        return True


def _data_problem(config_file: Path, names: dict[str, str]) -> str | None:
    """What trainer would refuse in the job's data, with file ids for paths; None when it would train on it."""
    from trainer.config import load_config
    from trainer.data.pipeline import prepare_data
    from trainer.models import load_tokenizer

    try:
        config = load_config(str(config_file))
        tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
        if config.training.objective == "grpo":
            _prompt_problems(config, tokenizer)
        else:
            prepare_data(config, tokenizer)
    except UserError as exc:
        message = exc.render(limit=20)
        for path, file_id in names.items():
            message = message.replace(path, file_id)
        return message
    return None


def _prompt_problems(config: Any, tokenizer: Any) -> None:
    """A reinforcement job's prompts checked as its training will read them (trainer/reinforcement/recipe.py's setup):
    the layout, the fields its grader reads, and that each prompt leaves room for an answer; UserError if not."""
    from trainer.data.pipeline import _NO_TEMPLATE, model_label
    from trainer.data.prompts import check_prompts, encode_prompts, read_prompts
    from trainer.data.templates import resolve_template
    from trainer.data.tokenize import Tokenizer
    from trainer.reinforcement.rewards import load_rewards

    prompt_set = read_prompts(config, load_rewards(config.training.grpo.graders))
    check_prompts(prompt_set, config.data.on_invalid)
    template = resolve_template(config.data.chat_template, tokenizer) if config.data.format != "text" else None
    encode = Tokenizer(tokenizer, template or _NO_TEMPLATE, config.data.train_on, config.data.max_seq_length,
                       fold_system=config.data.system_prompt == "fold", model_name=model_label(config.model))
    room = config.data.max_seq_length - config.training.grpo.max_completion_length
    problems = [p for prompts in (prompt_set.train, prompt_set.validation) for p in encode_prompts(prompts, encode, room)[1]]
    if problems and config.data.on_invalid == "error":
        raise UserError(problems[:20], title=f"{len(problems)} prompt(s) do not leave max_completion_length tokens for the answer "
                                             "within max_seq_length")


def _checkpoint_step(run: Path) -> int:
    """The step of the run's newest complete checkpoint (0: none, a resume starts from the beginning)."""
    from trainer.checkpoint import complete_checkpoints

    found = complete_checkpoints(run)
    return int(found[-1].name.split("-")[1]) if found else 0


def _log_tail(log: Path, lines: int = 12) -> str:
    """The end of what the child printed: for the person reading the error, never parsed."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
