"""`trainer api`: the self-hosted OpenAI fine-tuning API (trainer/api/)."""
from __future__ import annotations

import argparse

from trainer.commands import Command, SubParsers


def _add_api(sub: SubParsers) -> None:
    p = sub.add_parser("api", help="serve OpenAI's fine-tuning API: files, jobs, events, checkpoints, the tuned models and chat",
                       description="An OpenAI-compatible fine-tuning service on this machine: the official clients' "
                       "client.files.create, client.fine_tuning.jobs.* and client.chat.completions.create work unchanged "
                       "but for base_url and the model names (docs/coming-from-openai.md). Jobs run one at a time as "
                       "`trainer --config` processes; jobs, files and events are kept in SQLite, so a restart forgets nothing "
                       "and a job that was running resumes from its newest checkpoint.")
    p.add_argument("--models", required=True, metavar="FILE", help="the YAML naming the base models jobs may train, with aliases "
                   "(models: {NAME: {path: HUB_ID_OR_FOLDER, aliases: [...], config: {trainer settings}}})")
    p.add_argument("--data-dir", default="trainer-api", metavar="DIR", help="where uploads, jobs, runs and the database go (default ./trainer-api)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-keys", metavar="FILE", help="a file of `OWNER KEY` lines: each key is one owner, who sees only its own "
                   "files, jobs and models (default: the environment variable TRAINER_API_KEY, one key); needed for any host but this machine")
    p.add_argument("--max-upload-mb", type=float, default=512, help="the largest file an upload may be (default 512 MB)")
    p.add_argument("--max-jobs", type=int, default=8, help="jobs one owner may have waiting or running at once (default 8)")
    p.add_argument("--loaded-models", type=int, default=2, help="base models kept in memory for chat at once (default 2), "
                   "each with the adapters of up to 16 of its tuned models")
    p.add_argument("--database", metavar="URL", help="where jobs, files and events are kept: a SQLAlchemy URL, e.g. "
                   "postgresql+psycopg://user:password@host:5432/trainer (pip install 'trainer[postgres]'); default: SQLite "
                   "in the data directory (DIR/api.sqlite3)")
    p.add_argument("--trust-graders", action="store_true", help="let clients' reinforcement jobs use python graders (their code "
                   "runs on this machine) and score_model graders (called from this machine, with its OPENAI_API_KEY); refused otherwise")


def _api(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainer.api import ApiOptions, run_api

    run_api(ApiOptions(models=Path(args.models).expanduser(), data_dir=Path(args.data_dir), host=args.host, port=args.port,
                       api_keys=args.api_keys, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                       max_active_jobs=args.max_jobs, loaded_models=args.loaded_models, trust_graders=args.trust_graders, database=args.database))
    return 0


API = Command("api", _add_api, _api)
