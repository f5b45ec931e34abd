"""Files, jobs and events of the fine-tuning API in a database, so the service survives restarts: nothing a client was
told is forgotten, and a job that was running is picked up again.

SQLAlchemy Core, one code path for every database it speaks: SQLite in one file under the data directory by default
(<data dir>/api.sqlite3, WAL), or a `--database` URL (postgresql+psycopg://user@host/db) where the service outgrows a
file. Each write is its own transaction, committed before the caller goes on; a lock serialises the calls of the web
threads and the queue thread, as SQLite writes one at a time anyway and the service's load is small.
Listing is newest first with an `after` cursor (an id: the rows older than it), as OpenAI pages.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    create_engine,
    event,
    false,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, Row
from sqlalchemy.sql.elements import ColumnElement

T = TypeVar("T")

ACTIVE = ("validating_files", "queued", "running", "paused")  # a job in one of these may still change

_META = MetaData()
FILES = Table(
    "files", _META,
    Column("seq", Integer, primary_key=True, autoincrement=True), Column("id", Text, unique=True, nullable=False),
    Column("owner", Text, nullable=False), Column("filename", Text, nullable=False), Column("purpose", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False), Column("created_at", BigInteger, nullable=False), Column("path", Text, nullable=False),
    Index("files_by_owner", "owner", "seq"), sqlite_autoincrement=True)
JOBS = Table(
    "jobs", _META,
    Column("seq", Integer, primary_key=True, autoincrement=True), Column("id", Text, unique=True, nullable=False),
    Column("owner", Text, nullable=False), Column("created_at", BigInteger, nullable=False), Column("model", Text, nullable=False),
    Column("method", Text, nullable=False), Column("hyperparameters", Text, nullable=False), Column("training_file", Text, nullable=False),
    Column("validation_file", Text), Column("suffix", Text), Column("seed", BigInteger, nullable=False), Column("metadata", Text),
    Column("status", Text, nullable=False), Column("error", Text), Column("fine_tuned_model", Text), Column("finished_at", BigInteger),
    Column("trained_tokens", BigInteger), Column("result_files", Text, nullable=False), Column("estimated_finish", BigInteger),
    Column("folder", Text, nullable=False), Column("pid", Integer), Column("resume", Boolean, nullable=False),
    Column("cancel_requested", Boolean, nullable=False), Column("train_step", Integer, nullable=False),
    Column("eval_step", Integer, nullable=False), Column("restarts", Integer, nullable=False),
    Column("pause_requested", Boolean, nullable=False, server_default=false()),
    Index("jobs_by_owner", "owner", "seq"), sqlite_autoincrement=True)
EVENTS = Table(
    "events", _META,
    Column("seq", Integer, primary_key=True, autoincrement=True), Column("id", Text, unique=True, nullable=False),
    Column("job_id", Text, nullable=False), Column("created_at", BigInteger, nullable=False), Column("level", Text, nullable=False),
    Column("message", Text, nullable=False), Column("type", Text, nullable=False), Column("data", Text),
    Index("events_by_job", "job_id", "seq"), sqlite_autoincrement=True)
# columns added since the first release: a database of an older service gets them (with their server default) when
# it is opened, so it opens as it was
_ADDED_COLUMNS = {"jobs": ("pause_requested",)}
# sqlite_autoincrement: SQLite gives a deleted row's seq again otherwise, and the `after` cursors rely on it never being


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


def _to_sql(value: Any, column: str) -> Any:
    return (None if value is None else json.dumps(value)) if column in _JSON_COLUMNS else value


def _from_sql(cls: type[T], row: Row[Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: (json.loads(v) if k in _JSON_COLUMNS and v is not None else v) for k, v in row._mapping.items() if k in names}
    return cls(**values)


def database_url(database: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL of the service's database: --database as given, else SQLite in the data directory."""
    return database or f"sqlite:///{data_dir / 'api.sqlite3'}"


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
        cursor.close()


class Store:
    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        connect = {"check_same_thread": False} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, connect_args=connect, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)
        _META.create_all(self.engine)  # the tables and indexes that are not there yet
        self._add_columns()
        self.lock = threading.Lock()

    def _add_columns(self) -> None:
        found = inspect(self.engine)
        with self.engine.begin() as db:
            for name, added in _ADDED_COLUMNS.items():
                table, have = _META.tables[name], {c["name"] for c in found.get_columns(name)}
                for column in (table.c[c] for c in added if c not in have):
                    declared = column.type.compile(self.engine.dialect)
                    default = column.server_default.arg.compile(dialect=self.engine.dialect)  # type: ignore[union-attr]
                    db.execute(text(f"ALTER TABLE {name} ADD COLUMN {column.name} {declared} NOT NULL DEFAULT {default}"))

    def close(self) -> None:
        self.engine.dispose()

    def _all(self, query: Any) -> list[Row[Any]]:
        with self.lock, self.engine.connect() as db:
            return list(db.execute(query).fetchall())

    def _run(self, statement: Any) -> int:
        """A write, committed before it returns; the number of rows it changed."""
        with self.lock, self.engine.begin() as db:
            return int(db.execute(statement).rowcount)

    def _insert(self, table: Table, row: Any) -> None:
        self._run(table.insert().values({k: _to_sql(v, k) for k, v in asdict(row).items()}))

    def _page(self, table: Table, where: ColumnElement[bool], after: str | None, limit: int,
              newest_first: bool = True) -> tuple[list[Row[Any]], bool]:
        """Up to `limit` rows past the cursor, and whether there are more."""
        if after is not None:
            cursor = func.coalesce(select(table.c.seq).where(table.c.id == after).scalar_subquery(), -1)
            where = and_(where, table.c.seq < cursor if newest_first else table.c.seq > cursor)
        order = table.c.seq.desc() if newest_first else table.c.seq.asc()
        rows = self._all(select(table).where(where).order_by(order).limit(limit + 1))
        return rows[:limit], len(rows) > limit

    # --- files ---
    def add_file(self, row: FileRow) -> None:
        self._insert(FILES, row)

    def file(self, owner: str, file_id: str) -> FileRow | None:
        rows = self._all(select(FILES).where(FILES.c.id == file_id, FILES.c.owner == owner))
        return _from_sql(FileRow, rows[0]) if rows else None

    def files(self, owner: str, purpose: str | None, after: str | None, limit: int, newest_first: bool) -> tuple[list[FileRow], bool]:
        where = FILES.c.owner == owner
        if purpose is not None:
            where = and_(where, FILES.c.purpose == purpose)
        rows, more = self._page(FILES, where, after, limit, newest_first)
        return [_from_sql(FileRow, r) for r in rows], more

    def count_files(self, owner: str) -> int:
        return int(self._all(select(func.count()).select_from(FILES).where(FILES.c.owner == owner))[0][0])

    def delete_file(self, owner: str, file_id: str) -> bool:
        return self._run(FILES.delete().where(FILES.c.id == file_id, FILES.c.owner == owner)) > 0

    def file_in_use(self, file_id: str) -> bool:
        """Whether a job that may still start reads this file."""
        uses = (JOBS.c.training_file == file_id) | (JOBS.c.validation_file == file_id)
        return bool(self._all(select(JOBS.c.id).where(uses, JOBS.c.status.in_(ACTIVE)).limit(1)))

    # --- jobs ---
    def add_job(self, row: JobRow) -> None:
        self._insert(JOBS, row)

    def job(self, job_id: str, owner: str | None = None) -> JobRow | None:
        rows = self._all(select(JOBS).where(JOBS.c.id == job_id))
        job = _from_sql(JobRow, rows[0]) if rows else None
        return job if job is not None and owner in (None, job.owner) else None

    def jobs(self, owner: str, after: str | None, limit: int) -> tuple[list[JobRow], bool]:
        rows, more = self._page(JOBS, JOBS.c.owner == owner, after, limit)
        return [_from_sql(JobRow, r) for r in rows], more

    def active_jobs(self) -> list[JobRow]:
        """Jobs that may still change, oldest first: the queue's order."""
        return [_from_sql(JobRow, r) for r in self._all(select(JOBS).where(JOBS.c.status.in_(ACTIVE)).order_by(JOBS.c.seq))]

    def count_active(self, owner: str) -> int:
        query = select(func.count()).select_from(JOBS).where(JOBS.c.owner == owner, JOBS.c.status.in_(ACTIVE))
        return int(self._all(query)[0][0])

    def succeeded(self, owner: str | None) -> list[JobRow]:
        """Jobs whose tuned model is served (of one owner, or of all), oldest first."""
        query = select(JOBS).where(JOBS.c.status == "succeeded", JOBS.c.fine_tuned_model.is_not(None))
        if owner is not None:
            query = query.where(JOBS.c.owner == owner)
        return [_from_sql(JobRow, r) for r in self._all(query.order_by(JOBS.c.seq))]

    def update_job(self, job_id: str, **changes: Any) -> None:
        self._run(JOBS.update().where(JOBS.c.id == job_id).values({k: _to_sql(v, k) for k, v in changes.items()}))

    def set_status(self, job_id: str, expected: tuple[str, ...], **changes: Any) -> bool:
        """Change a job only while its status is one of `expected` (a cancel and the queue may race); True if it did."""
        statement = JOBS.update().where(JOBS.c.id == job_id, JOBS.c.status.in_(expected))
        return self._run(statement.values({k: _to_sql(v, k) for k, v in changes.items()})) > 0

    # --- events ---
    def add_event(self, job_id: str, message: str, level: str = "info", kind: str = "message",
                  data: dict[str, Any] | None = None) -> None:
        self._run(EVENTS.insert().values(id=f"ftevent-{uuid.uuid4().hex[:24]}", job_id=job_id, created_at=int(time.time()), level=level,
                                         message=message, type=kind, data=json.dumps(data) if data is not None else None))

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        rows, more = self._page(EVENTS, EVENTS.c.job_id == job_id, after, limit)
        return [{"id": r.id, "object": "fine_tuning.job.event", "created_at": r.created_at, "level": r.level,
                 "message": r.message, "type": r.type, "data": json.loads(r.data) if r.data else {}} for r in rows], more
