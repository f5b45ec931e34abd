"""Training jobs for the UI: each is `trainer --config` (or `trainer eval`) in its own process, one at a time.

A job lives in <workdir>/jobs/<id>/: config.yaml, job.json (its state) and
log.txt (everything the process printed). The process is started by
trainer/childproc.py, in its own session, so closing the browser or restarting
the UI does not stop it; the state on disk is read back when the UI starts again.
Stop sends SIGTERM, on which the training loop saves a checkpoint (the job is
"stopping" until its process ends; the log says what it finishes); Resume runs the same config with
--resume.

What the UI shows comes from files, not from the printed log: progress from the
run's metrics.jsonl (each training row carries step and total_steps), the
outcome from trainer's exit code (trainer/errors.py): EXIT_OK finished,
EXIT_STOPPED stopped (a checkpoint was saved: Resume continues it), anything
else failed.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer import childproc
from trainer.errors import EXIT_OK, EXIT_STOPPED, RESUME_HINT


@dataclass
class Job:
    id: str
    kind: str  # train | eval | export
    config: str  # path of its config.yaml
    run_dir: str
    status: str = "queued"  # queued | running | stopping (Stop was pressed, the process has not ended) | finished | failed | stopped
    pid: int | None = None
    returncode: int | None = None
    resume: bool = False
    stop_requested: bool = False  # Stop was pressed while it ran (kept in job.json; the outcome is the exit code's)
    created: float = 0.0
    started: float | None = None
    finished: float | None = None


ACTIVE = ("running", "stopping")  # the statuses of a job whose process runs


class JobManager:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.root = self.workdir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    # --- state on disk ---
    def _dir(self, job_id: str) -> Path:
        return self.root / job_id

    def _save(self, job: Job) -> None:
        path = self._dir(job.id) / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(job), indent=2))
        os.replace(tmp, path)

    def get(self, job_id: str) -> Job:
        return Job(**json.loads((self._dir(job_id) / "job.json").read_text()))

    def jobs(self) -> list[Job]:
        found = []
        for path in self.root.glob("*/job.json"):
            try:
                found.append(Job(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(found, key=lambda j: j.created)

    # --- submitting and running ---
    def submit(self, config_text: str, run_dir: str, kind: str = "train") -> Job:
        with self.lock:
            job_id = time.strftime("%Y%m%d-%H%M%S") + f"-{len(list(self.root.iterdir())):03d}"
            folder = self._dir(job_id)
            folder.mkdir(parents=True)
            (folder / "config.yaml").write_text(config_text, encoding="utf-8")
            job = Job(job_id, kind, str(folder / "config.yaml"), run_dir, created=time.time())
            self._save(job)
        self.poll()
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue a stopped or failed training job again, continuing from its newest checkpoint."""
        with self.lock:
            job = self.get(job_id)
            if job.status in ("queued", *ACTIVE):
                return job
            job.status, job.resume, job.returncode, job.pid, job.finished = "queued", True, None, None, None
            job.stop_requested = False
            job.created = time.time()
            self._save(job)
        self.poll()
        return self.get(job_id)

    def stop(self, job_id: str) -> Job:
        with self.lock:
            job = self.get(job_id)
            if job.status == "queued":
                job.status = "stopped"
                self._save(job)
            elif job.status == "running" and job.pid:  # while stopping, a second press would end it without a checkpoint
                job.status, job.stop_requested = "stopping", True
                self._save(job)
                childproc.stop(job.pid)  # passed on to trainer, which saves a checkpoint and exits
        return self.get(job_id)

    def poll(self) -> list[Job]:
        """Update running jobs from their processes and start the next queued one when none runs."""
        with self.lock:
            jobs = self.jobs()
            for job in jobs:
                if job.status in ACTIVE and not childproc.alive(job.pid):
                    code = childproc.exit_code(self._dir(job.id) / "exit_code")
                    job.returncode = code
                    job.status = outcome(code)
                    job.finished = time.time()
                    self._save(job)
            if not any(j.status in ACTIVE for j in jobs):
                queued = [j for j in jobs if j.status == "queued"]
                if queued:
                    self._start(queued[0])
            return self.jobs()

    def _start(self, job: Job) -> None:
        folder = self._dir(job.id)
        if job.kind == "eval":
            args = ["eval", "--config", job.config, "--run", job.run_dir]
        elif job.kind == "export":  # the GGUF and an Ollama Modelfile, into <run>/export
            args = ["export", "--run", job.run_dir, "--to", "ollama"]
        else:
            args = ["--config", job.config] + (["--resume"] if job.resume else [])
        pid = childproc.start_trainer(args, folder / "exit_code", folder / "log.txt", self.workdir,
                                      env={RESUME_HINT: "Press Resume to continue it."})
        job.status, job.pid, job.started = "running", pid, time.time()
        self._save(job)

    # --- what the UI shows ---
    def log(self, job_id: str, lines: int = 40) -> str:
        path = self._dir(job_id) / "log.txt"
        if not path.is_file():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])

    def progress(self, job_id: str) -> tuple[int, int] | None:
        """(step, total steps) of the newest training row in a training job's metrics.jsonl."""
        if self.get(job_id).kind != "train":
            return None
        rows = [r for r in self.losses(job_id) if "total_steps" in r]
        return (int(rows[-1]["step"]), int(rows[-1]["total_steps"])) if rows else None

    def losses(self, job_id: str) -> list[dict]:
        """metrics.jsonl of the job's run directory: training loss per logged step and validation losses."""
        return childproc.read_jsonl(self.workdir / self.get(job_id).run_dir / "metrics.jsonl")


def outcome(code: int | None) -> str:
    """A finished job's status from trainer's exit code (None: the job left none, its wrapper was killed)."""
    if code == EXIT_OK:
        return "finished"
    return "stopped" if code == EXIT_STOPPED else "failed"
