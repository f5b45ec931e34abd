"""`trainer api`: OpenAI's fine-tuning API, self-hosted on one machine, for the official clients unchanged.

  trainer api --models models.yaml [--data-dir DIR] [--api-keys FILE] [--database URL]

/v1/files, /v1/fine_tuning/jobs (events, checkpoints, cancel), /v1/models and /v1/chat/completions. The operator
names the base models in a small YAML (trainer/api/catalog.py); jobs, files and events are kept in SQLite under
the data directory, or the database --database names (trainer/api/store.py) and trained one at a time as `trainer --config` children
(trainer/api/queue.py). docs/coming-from-openai.md is the user's guide.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.api.catalog import Catalog
from trainer.errors import Problem, UserError


@dataclass(frozen=True)
class ApiOptions:
    models: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: str | None = None  # a file of OWNER KEY lines; None: TRAINER_API_KEY, else no keys (this machine only)
    max_upload_bytes: int = 512 * 1024 * 1024
    max_active_jobs: int = 8
    loaded_models: int = 2
    database: str | None = None  # a SQLAlchemy URL; None: SQLite in the data directory
    trust_graders: bool = False  # clients' python and score_model graders run (code on this machine, calls from it)


def learning_rates(catalog: Catalog) -> dict[str, float]:
    """Each base model's learning rate (its YAML config's, else trainer's default), read from a job config for it as
    trainer checks it: a setting trainer would refuse in the operator's YAML stops the service at its start."""
    from trainer.api.jobspec import base_config
    from trainer.config.validate import parse_config

    rates: dict[str, float] = {}
    problems: list[Problem] = []
    for model in catalog.models:
        try:
            rates[model.name] = parse_config(base_config(model), f"models.{model.name}", check_files=False).training.learning_rate
            if "grpo" in (model.config.get("training") or {}):  # the settings of reinforcement jobs only
                parse_config(base_config(model, "grpo"), f"models.{model.name}", check_files=False)
        except UserError as exc:
            # said at the operator's YAML (models.NAME.config.PATH), not at the job config it was laid into
            problems += [Problem(p.message, path=f"models.{model.name}.config" + (f".{p.path}" if p.path else "")) for p in exc.problems]
    if problems:
        raise UserError(problems, title="the models YAML asks for settings trainer refuses:")
    return rates


def _open_store(store: Any, url: str) -> Any:
    """The store at `url`, or a UserError saying what is wrong with the URL or the database (its password left out)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise UserError(f"--database {url!r} is not a database URL; e.g. postgresql+psycopg://user@host:5432/trainer "
                        "(default: SQLite in the data directory)") from None
    try:
        return store(url)
    except ModuleNotFoundError as exc:
        raise UserError(f"--database {shown} needs the Python package {exc.name}: pip install 'trainer[postgres]'") from None
    except SQLAlchemyError as exc:
        raise UserError(f"--database {shown} cannot be opened: {str(exc.orig if hasattr(exc, 'orig') else exc).strip()}") from None


def run_api(options: ApiOptions) -> None:
    from trainer.serve import is_loopback

    try:
        import uvicorn

        from trainer.api.app import ApiLimits, Service, create_app
    except ModuleNotFoundError as exc:
        raise UserError(f"`trainer api` needs {exc.name}: pip install 'trainer[api]'") from None
    from trainer.api.catalog import load_catalog
    from trainer.api.chat import LoadedModels
    from trainer.api.keys import load_keys
    from trainer.api.queue import JobQueue
    from trainer.api.store import Store, database_url

    catalog = load_catalog(options.models)
    keys = load_keys(options.api_keys)
    if not is_loopback(options.host) and not keys.required:
        raise UserError(f"--host {options.host} lets other machines reach the service: give the API keys with --api-keys FILE "
                        "(one `OWNER KEY` a line) or TRAINER_API_KEY (clients send it as Authorization: Bearer KEY).")
    rates = learning_rates(catalog)
    data_dir = options.data_dir.expanduser().resolve()
    for folder in ("files", "jobs"):
        (data_dir / folder).mkdir(parents=True, exist_ok=True)
    store = _open_store(Store, database_url(options.database, data_dir))
    jobs = JobQueue(store, data_dir)
    service = Service(store, jobs, catalog, rates, data_dir, ApiLimits(max_upload_bytes=options.max_upload_bytes,
                      max_active_jobs=options.max_active_jobs, trust_graders=options.trust_graders), LoadedModels(options.loaded_models))
    app = create_app(service, keys)
    jobs.start()
    where = f"http://{options.host}:{options.port}/v1"
    print(f"trainer api at {where}: trains {', '.join(catalog.names())}; data in {data_dir} (Ctrl-C stops; running jobs go on "
          f"and are picked up at the next start).\n  from openai import OpenAI; client = OpenAI(base_url={where!r}, "
          f"api_key={'<your key>' if keys.required else repr('none')})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=options.host, port=options.port, log_level="warning")
    finally:
        jobs.close()
        service.models.close()
        store.close()
