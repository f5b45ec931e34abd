"""Files, jobs and events of the fine-tuning API in one SQLite file (<data dir>/api.sqlite3), so the service survives
restarts: nothing a client was told is forgotten, and a job that was running is picked up again.

The stdlib's sqlite3 rather than SQLAlchemy: three tables, a handful of queries, and no dependency to add; one
connection behind a lock serves the web threads and the queue thread (SQLite writes one at a time anyway).
Listing is newest first with an `after` cursor (an id: the rows older than it), as OpenAI pages.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ACTIVE = ("validating_files", "queued", "running", "paused")  # a job in one of these may still change
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, created_at INTEGER NOT NULL,
    model TEXT NOT NULL, method TEXT NOT NULL, hyperparameters TEXT NOT NULL, training_file TEXT NOT NULL,
    validation_file TEXT, suffix TEXT, seed INTEGER NOT NULL, metadata TEXT, status TEXT NOT NULL, error TEXT,
    fine_tuned_model TEXT, finished_at INTEGER, trained_tokens INTEGER, result_files TEXT NOT NULL,
    estimated_finish INTEGER, folder TEXT NOT NULL, pid INTEGER, resume INTEGER NOT NULL, cancel_requested INTEGER NOT NULL,
    train_step INTEGER NOT NULL, eval_step INTEGER NOT NULL, restarts INTEGER NOT NULL, pause_requested INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, seq);
"""
# columns added since the first release, with what rows written before them read as: a data directory of an older
# service opens as it was
_ADDED_COLUMNS = {"jobs": {"pause_requested": "INTEGER NOT NULL DEFAULT 0"}}


@dataclass
class FileRow:
    id: str
    owner: str
    filename: str  # as the client named it: shown, never used as a path
    purpose: str
    bytes: int
    created_at: int
    path: str  # where it is stored: <data dir>/files/<id>

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None, "expires_at": None}


@dataclass
class JobRow:
    id: str
    owner: str
    created_at: int
    model: str  # the base model's name in the catalog
    method: dict[str, Any]  # OpenAI's method object, hyperparameters resolved
    hyperparameters: dict[str, Any]  # the same, as the top-level field shows them
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    folder: str  # <data dir>/jobs/<id>: config.yaml, run/, log.txt, exit_code
    status: str = "validating_files"
    error: dict[str, Any] | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    estimated_finish: int | None = None
    pid: int | None = None  # the wrapper of the running child (trainer/childproc.py)
    resume: bool = False  # the next start continues from the newest checkpoint
    cancel_requested: bool = False
    pause_requested: bool = False  # paused (not failed, not cancelled) when the child it was sent SIGTERM to ends
    train_step: int = 0  # the newest training and validation steps of metrics.jsonl already told as events
    eval_step: int = -1
    restarts: int = 0  # starts after the service was killed mid-job

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "fine_tuning.job", "created_at": self.created_at, "model": self.model,
                "organization_id": self.owner, "status": self.status, "error": self.error,
                "fine_tuned_model": self.fine_tuned_model, "finished_at": self.finished_at,
                "hyperparameters": self.hyperparameters, "method": self.method, "training_file": self.training_file,
                "validation_file": self.validation_file, "result_files": self.result_files, "trained_tokens": self.trained_tokens,
                "seed": self.seed, "suffix": self.suffix, "metadata": self.metadata, "estimated_finish": self.estimated_finish,
                "integrations": []}


_JSON_COLUMNS = {"method", "hyperparameters", "metadata", "error", "result_files", "data"}
_BOOL_COLUMNS = {"resume", "cancel_requested", "pause_requested"}


def _to_sql(value: Any, column: str) -> Any:
    if column in _JSON_COLUMNS:
        return None if value is None else json.dumps(value)
    return int(value) if column in _BOOL_COLUMNS else value


def _from_sql(cls: type[T], row: sqlite3.Row) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: (json.loads(row[k]) if k in _JSON_COLUMNS and row[k] is not None else row[k]) for k in row.keys() if k in names}
    values.update({k: bool(values[k]) for k in _BOOL_COLUMNS if k in values})
    return cls(**values)


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # autocommit: each write is durable
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        for table, added in _ADDED_COLUMNS.items():
            have = {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for column, declared in added.items():
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declared}")
        self.lock = threading.Lock()

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def _run(self, sql: str, *args: Any) -> int:
        with self.lock:
            return self.db.execute(sql, args).rowcount

    def _insert(self, table: str, row: Any) -> None:
        values = asdict(row)
        self._run(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                  *(_to_sql(v, k) for k, v in values.items()))

    def _page(self, table: str, where: str, args: tuple[Any, ...], after: str | None, limit: int,
              newest_first: bool = True) -> tuple[list[sqlite3.Row], bool]:
        """Up to `limit` rows past the cursor, and whether there are more."""
        if after is not None:
            where += f" AND seq {'<' if newest_first else '>'} COALESCE((SELECT seq FROM {table} WHERE id = ?), -1)"
            args = (*args, after)
        rows = self._all(f"SELECT * FROM {table} WHERE {where} ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
                         *args, limit + 1)
        return rows[:limit], len(rows) > limit

    # --- files ---
    def add_file(self, row: FileRow) -> None:
        self._insert("files", row)

    def file(self, owner: str, file_id: str) -> FileRow | None:
        rows = self._all("SELECT * FROM files WHERE id = ? AND owner = ?", file_id, owner)
        return _from_sql(FileRow, rows[0]) if rows else None

    def files(self, owner: str, purpose: str | None, after: str | None, limit: int, newest_first: bool) -> tuple[list[FileRow], bool]:
        where, args = "owner = ?", (owner,) + (() if purpose is None else (purpose,))
        if purpose is not None:
            where += " AND purpose = ?"
        rows, more = self._page("files", where, args, after, limit, newest_first)
        return [_from_sql(FileRow, r) for r in rows], more

    def count_files(self, owner: str) -> int:
        return int(self._all("SELECT COUNT(*) FROM files WHERE owner = ?", owner)[0][0])

    def delete_file(self, owner: str, file_id: str) -> bool:
        return self._run("DELETE FROM files WHERE id = ? AND owner = ?", file_id, owner) > 0

    def file_in_use(self, file_id: str) -> bool:
        """Whether a job that may still start reads this file."""
        return bool(self._all(f"SELECT 1 FROM jobs WHERE (training_file = ? OR validation_file = ?) AND status IN ({_marks(ACTIVE)})",
                              file_id, file_id, *ACTIVE))

    # --- jobs ---
    def add_job(self, row: JobRow) -> None:
        self._insert("jobs", row)

    def job(self, job_id: str, owner: str | None = None) -> JobRow | None:
        rows = self._all("SELECT * FROM jobs WHERE id = ?", job_id)
        job = _from_sql(JobRow, rows[0]) if rows else None
        return job if job is not None and owner in (None, job.owner) else None

    def jobs(self, owner: str, after: str | None, limit: int) -> tuple[list[JobRow], bool]:
        rows, more = self._page("jobs", "owner = ?", (owner,), after, limit)
        return [_from_sql(JobRow, r) for r in rows], more

    def active_jobs(self) -> list[JobRow]:
        """Jobs that may still change, oldest first: the queue's order."""
        return [_from_sql(JobRow, r) for r in self._all(f"SELECT * FROM jobs WHERE status IN ({_marks(ACTIVE)}) ORDER BY seq", *ACTIVE)]

    def count_active(self, owner: str) -> int:
        return int(self._all(f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ({_marks(ACTIVE)})", owner, *ACTIVE)[0][0])

    def succeeded(self, owner: str | None) -> list[JobRow]:
        """Jobs whose tuned model is served (of one owner, or of all), oldest first."""
        where, args = "status = 'succeeded' AND fine_tuned_model IS NOT NULL", tuple[str, ...]()
        if owner is not None:
            where, args = where + " AND owner = ?", (owner,)
        return [_from_sql(JobRow, r) for r in self._all(f"SELECT * FROM jobs WHERE {where} ORDER BY seq", *args)]

    def update_job(self, job_id: str, **changes: Any) -> None:
        self._run(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                  *(_to_sql(v, k) for k, v in changes.items()), job_id)

    def set_status(self, job_id: str, expected: tuple[str, ...], **changes: Any) -> bool:
        """Change a job only while its status is one of `expected` (a cancel and the queue may race); True if it did."""
        sets = ", ".join(f"{k} = ?" for k in changes)
        return self._run(f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({_marks(expected)})",
                         *(_to_sql(v, k) for k, v in changes.items()), job_id, *expected) > 0

    # --- events ---
    def add_event(self, job_id: str, message: str, level: str = "info", kind: str = "message",
                  data: dict[str, Any] | None = None) -> None:
        import uuid

        self._run("INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  f"ftevent-{uuid.uuid4().hex[:24]}", job_id, int(time.time()), level, message, kind,
                  json.dumps(data) if data is not None else None)

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        rows, more = self._page("events", "job_id = ?", (job_id,), after, limit)
        return [{"id": r["id"], "object": "fine_tuning.job.event", "created_at": r["created_at"], "level": r["level"],
                 "message": r["message"], "type": r["type"], "data": json.loads(r["data"]) if r["data"] else {}} for r in rows], more


def _marks(values: tuple[str, ...]) -> str:
    return ", ".join("?" * len(values))
