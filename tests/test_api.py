"""`trainer api`: the official `openai` client against a real `trainer api` process training the tiny model.

The cookbook's flow (upload, create with a suffix, poll retrieve and list_events, chat with fine_tuned_model, the
answers equal to `trainer generate`'s), cancel mid-run, kill -9 of the service (and its job, as when the machine goes
down) then a restart that resumes the job, two owners who cannot see each other's things, and bad requests answered
4xx with the service still serving. The unit tier checks the pieces in this process: hyperparameter resolution and
the config a job becomes.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_DATA, run_trainer

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"
FINAL = ("succeeded", "failed", "cancelled")


# --- the unit tier: what a request becomes ---

def test_auto_hyperparameters_are_resolved_as_openai_documents():
    from trainer.api.jobspec import Asked, Hyperparameters, ReinforcementHyperparameters, auto_epochs, resolve

    assert auto_epochs(12) == 8 and auto_epochs(100) == 3 and auto_epochs(20_000) == 1 and auto_epochs(2) == 25
    auto = resolve(Asked("sft", Hyperparameters()), 12)
    assert (auto.n_epochs, auto.batch_size, auto.learning_rate_multiplier, auto.beta) == (8, 1, 1.0, None)
    assert resolve(Asked("sft", Hyperparameters()), 100_000).batch_size == 200
    assert resolve(Asked("sft", Hyperparameters()), 1_000_000).batch_size == 256
    assert resolve(Asked("dpo", Hyperparameters()), 12).beta == 0.1
    assert resolve(Asked("grpo", ReinforcementHyperparameters(), {}), 12).compute_multiplier == 1.0


def test_a_request_becomes_a_config_trainer_accepts(tmp_path, tiny_model_dir):
    from trainer.api.catalog import BaseModel
    from trainer.api.jobspec import CreateJob, chosen_hyperparameters, job_config, resolve
    from trainer.config.validate import parse_config

    model = BaseModel("tiny", str(tiny_model_dir), ("gpt-4o-mini",), {"training": {"learning_rate": 0.01}})
    request = CreateJob.model_validate({"model": "gpt-4o-mini", "training_file": "file-a", "method": {
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "beta": 0.3}}}})
    resolved = resolve(chosen_hyperparameters(request), 12)
    config = parse_config(job_config(model, 0.01, resolved, 7, "t.jsonl", None, str(tmp_path / "run")), check_files=False)
    assert (config.training.objective, config.training.epochs, config.training.batch_size, config.training.seed) == ("dpo", 2, 4, 7)
    assert config.training.learning_rate == pytest.approx(0.005) and config.training.dpo.beta == 0.3
    assert config.data.validation is None and config.data.validation_split == 0
    assert resolved.method() == {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4,
                                                                          "learning_rate_multiplier": 0.5, "beta": 0.3}}}


CLOSE = {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match", "input": "{{ sample.output_text }}",
         "reference": "{{ item.answer }}"}


def test_a_reinforcement_request_becomes_a_grpo_config(tmp_path, tiny_model_dir):
    """OpenAI's method.reinforcement: its grader is training.grpo.graders' one entry, compute_multiplier scales the
    operator's num_generations, and the operator's other grpo settings stay; they are left out of other jobs."""
    from trainer.api.catalog import BaseModel
    from trainer.api.jobspec import CreateJob, chosen_hyperparameters, job_config, resolve
    from trainer.config.validate import parse_config

    model = BaseModel("tiny", str(tiny_model_dir), (), {"training": {"grpo": {"num_generations": 4, "max_completion_length": 12}}})
    request = CreateJob.model_validate({"model": "tiny", "training_file": "f", "method": {"type": "reinforcement", "reinforcement": {
        "grader": CLOSE, "response_format": {"type": "text"},
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "compute_multiplier": 1.5, "eval_interval": "auto", "reasoning_effort": "default"}}}})
    resolved = resolve(chosen_hyperparameters(request), 8)
    config = parse_config(job_config(model, 0.01, resolved, 7, "t.jsonl", "v.jsonl", str(tmp_path / "run")), check_files=False)
    grpo = config.training.grpo
    assert (config.training.objective, config.training.epochs, config.training.batch_size) == ("grpo", 2, 4)
    assert (grpo.num_generations, grpo.max_completion_length, list(grpo.graders)) == (6, 12, [CLOSE])
    assert config.data.validation == "v.jsonl"  # read and checked as prompts; grpo measures no validation while it trains
    assert resolved.method()["reinforcement"]["hyperparameters"] == {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0, "compute_multiplier": 1.5, "eval_interval": "auto",
        "eval_samples": "auto", "reasoning_effort": "default"}
    supervised = resolve(chosen_hyperparameters(CreateJob.model_validate({"model": "tiny", "training_file": "f"})), 8)
    assert parse_config(job_config(model, 0.01, supervised, 7, "t.jsonl", None, "run"), check_files=False).training.objective == "sft"


def _reinforcement(grader: dict | None = None, **extra) -> dict:
    return {"method": {"type": "reinforcement", "reinforcement": {"grader": grader or CLOSE, **extra}}}


@pytest.mark.parametrize("body, says, param", [
    ({"method": {"type": "reinforcement"}}, "give method.reinforcement.grader", "method.reinforcement"),
    (_reinforcement(hyperparameters={"eval_interval": 5}), "eval_interval: grpo measures no validation", "method.reinforcement.hyperparameters.eval_interval"),
    (_reinforcement(hyperparameters={"eval_samples": 2}), "eval_samples", "method.reinforcement.hyperparameters.eval_samples"),
    (_reinforcement(hyperparameters={"reasoning_effort": "high"}), "no reasoning effort", "method.reinforcement.hyperparameters.reasoning_effort"),
    (_reinforcement(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), "json_schema",
     "method.reinforcement.response_format"),
    (_reinforcement({**CLOSE, "evaluation_metric": "cosine"}), "cosine", "method.reinforcement.grader.evaluation_metric"),
    (_reinforcement({"type": "string_check", "operation": "equals", "input": "{{ sample.output_text }}", "reference": "x"}),
     "operation", "method.reinforcement.grader.operation"),
    (_reinforcement({"type": "python", "source": "def grade(sample, item):\n    return 1.0\n"}), "trust-graders", "method.reinforcement.grader"),
    (_reinforcement({"type": "multi", "calculate_output": "a", "graders": {"a": {"type": "score_model", "model": "m", "input": [
        {"role": "user", "content": "{{ sample.output_text }}"}]}}}), "score_model", "method.reinforcement.grader.graders.a"),
    ({"integrations": [{"type": "wandb"}]}, "integrations", "integrations"),
    ({"hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised"}}, "not also at the top level", "hyperparameters"),
])
def test_what_is_not_supported_is_refused(body, says, param):
    from trainer.api.jobspec import CreateJob, Refused, chosen_hyperparameters

    with pytest.raises(Refused, match=says) as refused:
        chosen_hyperparameters(CreateJob.model_validate({"model": "m", "training_file": "f", **body}))
    assert refused.value.param == param


def test_trusted_graders_are_taken():
    from trainer.api.jobspec import CreateJob, chosen_hyperparameters

    body = {"model": "m", "training_file": "f", **_reinforcement({"type": "python", "source": "def grade(sample, item):\n    return 1.0\n"})}
    assert chosen_hyperparameters(CreateJob.model_validate(body), trust_graders=True).objective == "grpo"


def test_keys_are_owners_and_a_wrong_key_is_nobody(tmp_path):
    from trainer.api.keys import load_keys
    from trainer.errors import UserError

    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# owner key\nalice {ALICE}\nbob {BOB}\n")
    keys = load_keys(str(keys_file))
    assert keys.owner(f"Bearer {ALICE}") == "alice" and keys.owner(f"Bearer {BOB}") == "bob"
    assert keys.owner("Bearer nope") is None and keys.owner("") is None and keys.owner(ALICE) is None
    keys_file.write_text("alice short\n")
    with pytest.raises(UserError, match="shorter than 16"):
        load_keys(str(keys_file))


def _ask(worker, text: str = "say teal", max_tokens: int = 12) -> list:
    """Submit a greedy request to a chat worker; the list fills with its pieces, then None (or the exception that ended it)."""
    from trainer.serve.engines import Cancel, Job, Sampling

    got: list = []
    prompt = worker.engine.prompt([{"role": "user", "content": text}], None)
    worker.submit(Job(prompt, Sampling(max_tokens=max_tokens), Cancel(), got.append))
    return got


def _answer(got: list, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while not got or not (got[-1] is None or isinstance(got[-1], BaseException)):
        assert time.time() < deadline, "no answer in time"
        time.sleep(0.01)
    assert got[-1] is None and got[-2].finish_reason, got[-1]
    return "".join(p.text for p in got[:-1]).strip()


def _tiny_base(name: str, path) -> "BaseModel":  # noqa: F821
    from trainer.api.catalog import BaseModel

    return BaseModel(name, str(path), (), {"training": {"precision": "fp32"}})  # as the runs of tiny_config load it


def test_a_base_pushed_out_of_memory_ends_its_threads_and_frees_its_weights(trained_run, tiny_model_dir, tmp_path):
    """--loaded-models 1: two tuned models of one base share it (loaded once); a model on another base lets that base
    go. The answers already asked of its models (one running, two queued) are completed, then their generation
    threads end and nothing holds the base's weights any more."""
    import gc
    import shutil
    import weakref

    from trainer.api.chat import LoadedModels, base_source, run_source

    models = LoadedModels(capacity=1)
    first = models.get("ft:tiny:alice::first", lambda: run_source(trained_run))
    second = models.get("ft:tiny:alice::second", lambda: run_source(trained_run))
    assert models.base_loads == 1 and first.engine.base is second.engine.base
    weights, threads = weakref.ref(first.engine.base.model), [first.thread, second.thread]
    asked = [_ask(first), _ask(second), _ask(first)]
    del first, second
    other = models.get("other", lambda: base_source(_tiny_base("other", shutil.copytree(tiny_model_dir, tmp_path / "other"))))
    assert models.base_loads == 2
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert len({_answer(got) for got in asked}) == 1  # greedy, one adapter: the same answer three times
    gc.collect()
    assert weights() is None
    assert models.get("other", lambda: pytest.fail("loaded again")) is other and other.thread.is_alive()
    models.close()
    other.thread.join(60)
    assert not other.thread.is_alive()


@pytest.mark.integration
def test_tuned_models_of_one_base_share_it_and_answer_as_trainer_generate(trained_run, tiny_model_dir, tmp_path):
    """Two runs on the tiny model and the model itself, asked in turns: the base is loaded once, each run's adapter
    answers exactly what `trainer generate` answers with that run alone, and the base what it answers untuned."""
    from tests.conftest import tiny_config
    from trainer.api.chat import LoadedModels, base_source, run_source
    from trainer.cli import main
    from trainer.config.validate import parse_config
    from trainer.generate import generate, load_base, load_run

    assert main(["--config", str(tiny_config(tmp_path, tiny_model_dir, max_steps=8, learning_rate=0.03, seed=5))]) == 0
    runs = {"ft:tiny:alice::one": trained_run, "ft:tiny:alice::two": tmp_path / "run"}
    messages = [[{"role": "user", "content": w}] for w in ("say teal", "say navy")]
    expected = {name: [a.text for a in generate(load_run(run), messages, max_new_tokens=12)] for name, run in runs.items()}
    base = _tiny_base("tiny", tiny_model_dir)
    from trainer.api.jobspec import base_config

    expected["tiny"] = [a.text for a in generate(load_base(parse_config(base_config(base), check_files=False)), messages, max_new_tokens=12)]
    assert len({tuple(v) for v in expected.values()}) == 3  # three different models, or the test proves nothing
    models = LoadedModels(capacity=1)
    workers = {"tiny": models.get("tiny", lambda: base_source(base))}  # the base first: its adapters are added under it
    assert _answer(_ask(workers["tiny"], "say teal")) == expected["tiny"][0]
    workers |= {name: models.get(name, lambda run=run: run_source(run)) for name, run in runs.items()}
    assert models.base_loads == 1
    order = ["ft:tiny:alice::one", "tiny", "ft:tiny:alice::two", "ft:tiny:alice::one"] * 2  # the adapters switch between requests
    asked = [(name, k % 2, _ask(workers[name], messages[k % 2][0]["content"])) for k, name in enumerate(order)]
    assert [_answer(got) for _, _, got in asked] == [expected[name][k] for name, k, _ in asked]
    models.close()


# --- the database: SQLAlchemy Core, SQLite by default, Postgres by --database ---

@pytest.fixture(scope="module")
def postgres_server():
    """A real PostgreSQL server of this test module's own (initdb + pg_ctl, as the postgres user when run as root), on a
    free port; yields the URL of its maintenance database. Skipped where PostgreSQL or psycopg is not installed."""
    import pwd
    import shutil
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg is installed with the dev extra")
    import glob

    # Debian keeps them under /usr/lib/postgresql/<version>/bin, outside PATH (`make postgres` installs the package)
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    path = os.pathsep.join([os.environ.get("PATH", ""), *bins])
    initdb, pg_ctl = shutil.which("initdb", path=path), shutil.which("pg_ctl", path=path)
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="trainer-pg-"))  # not under pytest's root-only folder: the server must reach it
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = folder / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "start", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _new_database(server: str) -> str:
    """A fresh database on the PostgreSQL server, for one test."""
    import uuid

    import psycopg

    name = f"trainer_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql"), autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def database(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.sqlite3'}"
    return _new_database(request.getfixturevalue("postgres_server"))


def test_the_store_keeps_pages_and_guards_what_the_service_is_told(database, tmp_path):
    """The same queries on SQLite and PostgreSQL: owners apart, newest-first pages with `after`, a deleted file's place
    never given again, a status changed only from the expected ones, JSON and flags as written, all there when opened
    again."""
    from trainer.api.store import FileRow, JobRow, Store

    store = Store(database)
    for k, owner in enumerate(["alice", "alice", "bob", "alice"]):
        store.add_file(FileRow(f"file-{k}", owner, f"f{k}.jsonl", "fine-tune", 2**33 + k, 1000 + k, f"/data/files/file-{k}"))
    page, more = store.files("alice", None, None, 2, True)
    assert [f.id for f in page] == ["file-3", "file-1"] and more and page[0].bytes == 2**33 + 3
    assert ([f.id for f in store.files("alice", None, "file-1", 2, True)[0]], store.files("alice", "fine-tune", "file-1", 2, True)[1]) == (["file-0"], False)
    assert store.file("bob", "file-0") is None and store.count_files("alice") == 3
    assert store.delete_file("alice", "file-3") and not store.delete_file("bob", "file-1")
    store.add_file(FileRow("file-4", "alice", "f4.jsonl", "fine-tune", 1, 1004, "/data/files/file-4"))
    assert [f.id for f in store.files("alice", None, None, 10, True)[0]] == ["file-4", "file-1", "file-0"]
    job = JobRow("ftjob-a", "alice", 1000, "tiny", {"type": "supervised"}, {"n_epochs": 1}, "file-0", None, None, 7, {"k": "v"}, "/jobs/a")
    store.add_job(job)
    assert store.file_in_use("file-0") and store.count_active("alice") == 1
    assert not store.set_status("ftjob-a", ("queued",), status="running")  # it is validating: a racing change loses
    assert store.set_status("ftjob-a", ("validating_files",), status="running", pid=42, resume=True)
    store.update_job("ftjob-a", error={"code": "x", "message": "m", "param": None}, result_files=["file-9"], pause_requested=True)
    for k in range(5):
        store.add_event("ftjob-a", f"event {k}", data={"step": k} if k % 2 else None)
    events, more = store.events("ftjob-a", None, 3)
    assert [e["message"] for e in events] == ["event 4", "event 3", "event 2"] and more and events[1]["data"] == {"step": 3}
    assert [e["message"] for e in store.events("ftjob-a", events[-1]["id"], 3)[0]] == ["event 1", "event 0"]
    store.close()
    again = Store(database)
    now = again.job("ftjob-a", "alice")
    assert now is not None and again.job("ftjob-a", "bob") is None
    assert (now.status, now.pid, now.resume, now.pause_requested, now.cancel_requested) == ("running", 42, True, True, False)
    assert (now.error, now.result_files, now.metadata, now.method) == ({"code": "x", "message": "m", "param": None}, ["file-9"], {"k": "v"}, {"type": "supervised"})
    assert [j.id for j in again.active_jobs()] == ["ftjob-a"] and again.succeeded(None) == []
    again.set_status("ftjob-a", ("running",), status="succeeded", fine_tuned_model="ft:tiny:alice::a")
    assert [j.id for j in again.succeeded("alice")] == ["ftjob-a"] and not again.file_in_use("file-0")
    again.close()


def test_a_database_of_the_first_release_opens_with_the_columns_added_since(tmp_path):
    """A data directory written before jobs had pause_requested: the column is added, its rows read False."""
    import sqlite3

    from trainer.api.store import Store

    path = tmp_path / "api.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, created_at INTEGER NOT NULL,
            model TEXT NOT NULL, method TEXT NOT NULL, hyperparameters TEXT NOT NULL, training_file TEXT NOT NULL, validation_file TEXT,
            suffix TEXT, seed INTEGER NOT NULL, metadata TEXT, status TEXT NOT NULL, error TEXT, fine_tuned_model TEXT, finished_at INTEGER,
            trained_tokens INTEGER, result_files TEXT NOT NULL, estimated_finish INTEGER, folder TEXT NOT NULL, pid INTEGER,
            resume INTEGER NOT NULL, cancel_requested INTEGER NOT NULL, train_step INTEGER NOT NULL, eval_step INTEGER NOT NULL,
            restarts INTEGER NOT NULL);
        INSERT INTO jobs VALUES (1, 'ftjob-old', 'alice', 1, 'tiny', '{}', '{}', 'file-0', NULL, NULL, 1, NULL, 'paused', NULL, NULL,
            NULL, NULL, '[]', NULL, '/jobs/old', NULL, 1, 0, 3, -1, 0);
        """)
    store = Store(f"sqlite:///{path}")
    old = store.job("ftjob-old")
    assert old is not None and (old.status, old.resume, old.pause_requested) == ("paused", True, False)
    store.close()


@pytest.mark.integration
def test_the_service_on_postgres_keeps_files_jobs_and_events_across_a_kill(postgres_server, tmp_path, tiny_model_dir):
    """`trainer api --database postgresql+psycopg://...`: what a client was told survives kill -9 of the service, read
    back from PostgreSQL by the restarted one; no SQLite file is written."""
    url = _new_database(postgres_server)
    api = Api(tmp_path, _models_yaml(tmp_path, tiny_model_dir), None, "--database", url).start()
    try:
        client = api.client()
        train = _upload(client, tmp_path, "train.jsonl")
        job = client.fine_tuning.jobs.create(training_file=train.id, model="tiny", suffix="pg", hyperparameters={"n_epochs": 1})
        client.fine_tuning.jobs.cancel(job.id)
        told = [e.id for e in client.fine_tuning.jobs.list_events(job.id).data]
        api.kill()
        api.start()
        client = api.client()
        assert client.files.retrieve(train.id).bytes == train.bytes
        again = client.fine_tuning.jobs.retrieve(job.id)
        assert (again.status, again.suffix) == ("cancelled", "pg") and [e.id for e in client.fine_tuning.jobs.list_events(job.id).data] == told
        assert not (api.data / "api.sqlite3").exists()
    finally:
        _stop_all(api)


# --- a real service ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """A `trainer api` process on a free port (start() again after kill() is the same service coming back)."""

    def __init__(self, tmp: Path, models: Path, keys: Path | None = None, *extra: str):
        self.data, self.models, self.keys, self.extra = tmp / "data", models, keys, extra
        self.database = extra[extra.index("--database") + 1] if "--database" in extra else None
        self.port = _free_port()
        self.log = tmp / "api.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "Api":
        args = [sys.executable, "-m", "trainer", "api", "--models", str(self.models), "--data-dir", str(self.data),
                "--port", str(self.port), *self.extra] + (["--api-keys", str(self.keys)] if self.keys else [])
        self.process = subprocess.Popen(args, cwd=REPO, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=os.environ.copy())
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"trainer api did not come up:\n{self.log.read_text()[-3000:]}")

    def client(self, key: str = "none"):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _models_yaml(tmp: Path, model_dir: Path, **training) -> Path:
    """The operator's YAML: the tiny model, also answering to gpt-4o-mini; small, exact (fp32) and logging every step,
    with short answers for reinforcement jobs."""
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"tiny": {"path": str(model_dir), "aliases": ["gpt-4o-mini"], "config": {
        "data": {"max_seq_length": 64},
        "training": {"learning_rate": 0.01, "warmup_ratio": 0.0, "precision": "fp32",
                     "grpo": {"num_generations": 4, "max_completion_length": 12}, **training},  # grpo's: reinforcement jobs only
        "logging": {"log_every": 1}}}}}))
    return path


def _chat_file(tmp: Path, name: str, rows: list = TINY_DATA) -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _upload(client, tmp: Path, name: str, rows: list = TINY_DATA):
    """A JSONL file of `rows` written and uploaded for fine-tuning."""
    with open(_chat_file(tmp, name, rows), "rb") as file:
        return client.files.create(file=file, purpose="fine-tune")


def _train_straight(run: Path, tmp: Path) -> Path:
    """The job's own config trained again without a stop, by `trainer --config`: the run to compare with."""
    straight = tmp / "straight"
    result = run_trainer("--config", str(run.parent / "config.yaml"), "--set", f"output.dir={straight}", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return straight


def _wait(client, job_id: str, until: tuple = FINAL, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} still {job.status} after {timeout} s")


def _job_pids(api: Api) -> dict[str, int]:
    """The wrapper pid of each job with a child, as the service wrote it down (in its database, whichever it is)."""
    from trainer.api.store import Store, database_url

    store = Store(database_url(api.database, api.data))
    try:
        return {job.id: job.pid for job in store.active_jobs() if job.pid is not None}
    finally:
        store.close()


def _stop_all(api: Api) -> None:
    """Stop the service, then any training child it left (they outlive it by design), by the pids it wrote down."""
    api.stop()
    for pid in _job_pids(api).values():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("api")
    keys = tmp / "keys"
    keys.write_text(f"alice {ALICE}\nbob {BOB}\n")
    api = Api(tmp, _models_yaml(tmp, tiny_model_dir), keys, "--max-upload-mb", "0.1").start()
    yield api
    _stop_all(api)


@pytest.fixture
def start_service(tmp_path, tiny_model_dir):
    """A service of the test's own, for a test that cancels, pauses, kills or loads it: start_service(**training)
    starts one on the tiny model with those training settings; every one started is stopped after the test."""
    started: list[Api] = []

    def start(**training) -> Api:
        started.append(Api(tmp_path, _models_yaml(tmp_path, tiny_model_dir, **training)).start())
        return started[-1]

    yield start
    for api in started:
        _stop_all(api)


@pytest.mark.integration
def test_the_cookbook_flow_trains_and_chats_like_trainer_generate(service, tmp_path):
    client = service.client(ALICE)
    started = time.time()
    train = _upload(client, tmp_path, "train.jsonl")
    valid = _upload(client, tmp_path, "valid.jsonl", TINY_DATA[:4])
    assert train.filename == "train.jsonl" and train.bytes > 0 and train.purpose == "fine-tune"
    assert client.files.content(train.id).content == (tmp_path / "train.jsonl").read_bytes()
    job = client.fine_tuning.jobs.create(training_file=train.id, validation_file=valid.id, model="gpt-4o-mini", suffix="colours",
                                         hyperparameters={"n_epochs": 2, "batch_size": 4}, seed=3)
    assert job.status == "validating_files" and job.model == "tiny" and job.seed == 3
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.learning_rate_multiplier == 1.0
    seen: set[str] = set()
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in FINAL:
        seen |= {e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data}
        time.sleep(0.5)
    took = time.time() - started
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert job.status == "succeeded", (job.error, [e.message for e in events][:5])
    print(f"\ncookbook flow: upload to succeeded in {took:.1f} s")
    assert job.fine_tuned_model == f"ft:tiny:alice:colours:{job.id[-8:]}" and job.trained_tokens > 0 and job.finished_at
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert [e.data["step"] for e in reversed(metrics)] == [1, 2, 3, 4, 5, 6]  # 12 examples / 4 a batch x 2 epochs; newest first
    assert any(e.type == "metrics" and "valid_loss" in e.data for e in events)
    assert events[0].message == "The job has successfully completed"
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert page.has_more and client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id).data[0].id == events[3].id
    result = client.files.content(job.result_files[0]).text.splitlines()
    assert result[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(result) == 7
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [6, 3]  # one a epoch, newest first
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]
    assert client.fine_tuning.jobs.list(limit=1).data[0].id == job.id

    run = service.data / "jobs" / job.id / "run"
    generated = run_trainer("generate", "--run", str(run), "--prompt", "say teal", "--max-new-tokens", "12")
    assert generated.returncode == 0, generated.stderr
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "say teal"}],
                                           max_tokens=12, temperature=0)
    assert reply.choices[0].message.content.strip() == generated.stdout.strip()
    assert reply.model == job.fine_tuned_model


@pytest.mark.integration
def test_a_dpo_job_on_openai_preference_pairs_trains_and_chats(service, tmp_path):
    """method dpo on a file in OpenAI's preference format (input / preferred_output / non_preferred_output): the job
    trains trainer's DPO (its first loss log 2, as a new adapter is the reference model), tells its steps and
    validations as events, and its fine_tuned_model answers as `trainer generate` does."""
    import math

    client = service.client(ALICE)  # bob has no tuned model: the owners test counts on it
    pairs = [{"input": {"messages": r["messages"][:1]}, "preferred_output": r["messages"][1:],
              "non_preferred_output": [{"role": "assistant", "content": "I cannot say that."}]} for r in TINY_DATA]
    train = _upload(client, tmp_path, "pairs.jsonl", pairs)
    valid = _upload(client, tmp_path, "pairs-valid.jsonl", pairs[:4])
    job = client.fine_tuning.jobs.create(training_file=train.id, validation_file=valid.id, model="tiny", suffix="prefers", method={
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 5, "beta": 1.0}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 1.0
    job = _wait(client, job.id)
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert job.status == "succeeded", (job.error, [e.message for e in events][:5])
    run = service.data / "jobs" / job.id / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["objective"] == "dpo"
    losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics" and "train_loss" in e.data]
    assert len(losses) == 6 and losses[0] == pytest.approx(math.log(2), abs=1e-5)  # 12 pairs / 2 a batch
    assert any(e.type == "metrics" and "valid_loss" in e.data for e in events)
    assert job.fine_tuned_model == f"ft:tiny:alice:prefers:{job.id[-8:]}" and job.fine_tuned_model in [m.id for m in client.models.list().data]
    generated = run_trainer("generate", "--run", str(run), "--prompt", "say teal", "--max-new-tokens", "12")
    assert generated.returncode == 0, generated.stderr
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "say teal"}],
                                           max_tokens=12, temperature=0)
    assert reply.choices[0].message.content.strip() == generated.stdout.strip()


@pytest.mark.integration
def test_a_reinforcement_job_trains_on_its_grader_and_tells_the_reward(service, tmp_path):
    """method reinforcement on prompts in OpenAI's reinforcement format (messages ending with the user's turn, and the
    fields its grader reads): a bad grader is a 400 at create, a prompt without the field the grader reads fails the
    job's validation at its line, and the good job trains trainer's grpo, tells each step's reward in its events and
    result file, and its fine_tuned_model answers chat."""
    import openai

    client = service.client(ALICE)
    prompts = [{"messages": r["messages"][:1], "answer": r["messages"][1]["content"]} for r in TINY_DATA[:8]]
    train = _upload(client, tmp_path, "prompts.jsonl", prompts)
    valid = _upload(client, tmp_path, "prompts-valid.jsonl", prompts[:2])
    with pytest.raises(openai.BadRequestError, match="operation") as bad:
        client.fine_tuning.jobs.create(training_file=train.id, model="tiny", **_reinforcement(
            {"type": "string_check", "name": "same", "operation": "equals", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}))
    assert bad.value.body["param"] == "method.reinforcement.grader.operation"
    broken = _upload(client, tmp_path, "broken.jsonl", prompts[:3] + [{"messages": prompts[3]["messages"]}])
    refused = client.fine_tuning.jobs.create(training_file=broken.id, model="tiny", **_reinforcement())
    job = client.fine_tuning.jobs.create(training_file=train.id, validation_file=valid.id, model="tiny", suffix="rewarded", seed=1,
                                         **_reinforcement(hyperparameters={"n_epochs": 1, "batch_size": 4}))
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "close"
    assert job.method.reinforcement.hyperparameters.compute_multiplier == 1.0
    refused = _wait(client, refused.id)
    assert refused.status == "failed" and refused.error.code == "invalid_training_file", refused.error
    assert f"{broken.id}:4" in refused.error.message and "answer" in refused.error.message
    job = _wait(client, job.id)
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert job.status == "succeeded", (job.error, [e.message for e in events][:5])
    rewarded = [e for e in reversed(events) if e.type == "metrics" and "reward" in e.data]
    assert [e.data["step"] for e in rewarded] == [1, 2]  # 8 prompts / 4 a step
    assert all(0 <= e.data["reward_close"] <= 1 and e.data["reward"] == e.data["reward_close"] and ", reward=" in e.message for e in rewarded)
    result = client.files.content(job.result_files[0]).text.splitlines()
    assert result[0].endswith(",train_reward") and len(result) == 3
    assert job.fine_tuned_model == f"ft:tiny:alice:rewarded:{job.id[-8:]}"
    # its model chats as any tuned model does (the cookbook test compares those answers with trainer generate's)
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "say teal"}], max_tokens=4)
    assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens > 0


@pytest.mark.integration
def test_graders_run_and_validate_as_openai_s_alpha_endpoints(service):
    """client.fine_tuning.alpha.graders.run scores one sample with trainer's graders; validate checks a grader; a bad
    grader, or one the service does not take from clients, is a 400 naming where."""
    import openai

    graders = service.client(BOB).fine_tuning.alpha.graders
    exact = {"type": "string_check", "name": "exact", "operation": "eq", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}
    assert graders.run(grader=exact, model_sample="teal", item={"answer": "teal"}).reward == 1.0
    assert graders.run(grader=exact, model_sample="navy", item={"answer": "teal"}).reward == 0.0
    both = {"type": "multi", "name": "both", "graders": {"exact": exact, "close": CLOSE}, "calculate_output": "0.5 * exact + 0.5 * close"}
    ran = graders.run(grader=both, model_sample="teal", item={"answer": "teal"})
    assert ran.reward == 1.0 and ran.sub_rewards == {"exact": 1.0, "close": 1.0} and ran.metadata.type == "multi"
    missing = graders.run(grader=exact, model_sample="teal", item={"colour": "teal"})
    assert missing.reward == 0.0 and missing.metadata.errors.other_error and "item has no 'answer'" in missing.metadata.errors.other_error_details
    assert graders.validate(grader=exact).grader.name == "exact"
    with pytest.raises(openai.BadRequestError, match="operation") as bad:
        graders.validate(grader={**exact, "operation": "equals"})
    assert bad.value.body["param"] == "grader.operation"
    with pytest.raises(openai.BadRequestError, match="trust-graders"):
        graders.run(grader={"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}, model_sample="x")


@pytest.mark.integration
def test_base_models_and_their_aliases_chat_as_trainer_generate_answers_with_them(service):
    """The operator's base models answer /v1/chat/completions for every owner, an alias with its model's engine and
    name, each answer the one trainer's generate gives with the base model loaded as a job on it starts."""
    import openai

    from trainer.api.catalog import load_catalog
    from trainer.api.jobspec import base_config
    from trainer.config.validate import parse_config
    from trainer.generate import generate, load_base

    messages = [{"role": "user", "content": "say teal"}]
    replies = [service.client(key).chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0)
               for key, name in ((ALICE, "tiny"), (BOB, "gpt-4o-mini"))]
    assert [r.model for r in replies] == ["tiny", "tiny"]
    tiny = load_catalog(service.models).find("tiny")
    expected = generate(load_base(parse_config(base_config(tiny), check_files=False)), [messages], max_new_tokens=12, batch_size=1)[0]
    assert [r.choices[0].message.content.strip() for r in replies] == [expected.text.strip()] * 2
    assert replies[0].usage.prompt_tokens == expected.prompt_tokens
    with pytest.raises(openai.NotFoundError, match="tiny"):  # the message names what does answer
        service.client(BOB).chat.completions.create(model="gpt-5", messages=messages)


@pytest.mark.integration
def test_two_owners_do_not_see_each_others_files_jobs_or_models(service, tmp_path):
    import openai

    alice, bob = service.client(ALICE), service.client(BOB)
    mine = _upload(alice, tmp_path, "a.jsonl")
    job = alice.fine_tuning.jobs.create(training_file=mine.id, model="tiny", hyperparameters={"n_epochs": 1})
    alice.fine_tuning.jobs.cancel(job.id)
    assert mine.id not in [f.id for f in bob.files.list().data] and job.id not in [j.id for j in bob.fine_tuning.jobs.list().data]
    for call in (lambda: bob.files.retrieve(mine.id), lambda: bob.files.content(mine.id), lambda: bob.files.delete(mine.id),
                 lambda: bob.fine_tuning.jobs.retrieve(job.id), lambda: bob.fine_tuning.jobs.cancel(job.id),
                 lambda: bob.fine_tuning.jobs.list_events(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError, match="no fine-tune file"):
        bob.fine_tuning.jobs.create(training_file=mine.id, model="tiny")
    alice_models = [m.id for m in alice.models.list().data if m.id.startswith("ft:")]
    assert not [m.id for m in bob.models.list().data if m.id.startswith("ft:")]
    for name in alice_models:
        with pytest.raises(openai.NotFoundError):
            bob.chat.completions.create(model=name, messages=[{"role": "user", "content": "say red"}])
    with pytest.raises(openai.AuthenticationError):
        service.client("not-a-key").files.list()
    assert alice.files.retrieve(mine.id).id == mine.id


@pytest.mark.integration
def test_bad_requests_are_answered_4xx_and_the_service_keeps_serving(service, tmp_path):
    import httpx
    import openai

    client = service.client(BOB)
    good = _upload(client, tmp_path, "b.jsonl")
    with pytest.raises(openai.BadRequestError, match="not trained here.*tiny") as unknown:
        client.fine_tuning.jobs.create(training_file=good.id, model="gpt-5")
    assert unknown.value.body["param"] == "model" and unknown.value.body["code"] == "model_not_found"
    (tmp_path / "notes.txt").write_text("these are notes,\nnot JSON lines\n")
    with pytest.raises(openai.BadRequestError, match="notes.txt:1: not a JSON line"):
        client.files.create(file=open(tmp_path / "notes.txt", "rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="hyperparameters.warmup: not a field"):
        client.fine_tuning.jobs.create(training_file=good.id, model="tiny", hyperparameters={"warmup": 3})
    with pytest.raises(openai.BadRequestError, match="n_epochs"):
        client.fine_tuning.jobs.create(training_file=good.id, model="tiny", hyperparameters={"n_epochs": 0})
    with pytest.raises(openai.BadRequestError, match="reinforcement"):
        client.fine_tuning.jobs.create(training_file=good.id, model="tiny", method={"type": "reinforcement"})
    (tmp_path / "big.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x" * 200_000}]}) + "\n")
    with pytest.raises(openai.APIStatusError) as big:
        client.files.create(file=open(tmp_path / "big.jsonl", "rb"), purpose="fine-tune")
    assert big.value.status_code == 413
    # a client announcing 2 GB: answered at once, before a byte of it is read
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as raw:
        raw.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BOB}\r\nContent-Type: multipart/form-data; "
                    f"boundary=b\r\nContent-Length: {2 * 1024**3}\r\n\r\n".encode())
        assert raw.recv(200).startswith(b"HTTP/1.1 413")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert httpx.get(f"http://127.0.0.1:{service.port}/health").json()["status"] == "ok"
    for database, says in (("not a url", "is not a database URL"), ("postgresql+psycopg://u:SECRET@127.0.0.1:9/x", "cannot be opened")):
        refused = run_trainer("api", "--models", str(service.models), "--data-dir", str(tmp_path / "other"), "--database", database)
        assert refused.returncode == 2 and says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert "SECRET" not in refused.stderr
    assert good.id in [f.id for f in client.files.list().data]
    assert not list((service.data / "files").glob("*.tmp"))


@pytest.mark.integration
def test_the_ui_jobs_tab_lists_follows_and_cancels_a_job_of_the_service(service, tmp_path):
    """The web UI's Jobs tab (ui/service.py, what its buttons and timer call) against the real service: a wrong key
    is the service's 401 message, a training job is listed with its progress, followed through its events, and
    cancelled; another owner's job is the service's 404."""
    from ui import service as tab

    rows, said = tab.listed(service.url, "not-a-key")
    assert rows == [] and said.startswith("**401:") and "API key" in said
    client = service.client(BOB)
    train = _upload(client, tmp_path, "ui.jsonl")
    job = client.fine_tuning.jobs.create(training_file=train.id, model="tiny", hyperparameters={"n_epochs": 50, "batch_size": 1})
    deadline = time.time() + 300
    while "Progress: step" not in (shown := tab.shown(service.url, BOB, job.id))[0]:
        assert time.time() < deadline and client.fine_tuning.jobs.retrieve(job.id).status not in FINAL, shown
        time.sleep(0.5)
    summary, events = shown
    assert summary.startswith(f"**{job.id}**: running (supervised on tiny)") and "Fine-tuning job started" in [e[2] for e in events]
    rows, said = tab.listed(service.url, BOB)
    mine = next(r for r in rows if r[0] == job.id)
    assert mine[1:4] == ["tiny", "supervised", "running"] and mine[4].startswith("step ") and "/600 (" in mine[4]
    assert "404" in tab.shown(service.url, ALICE, job.id)[0]
    tab.cancelled(service.url, BOB, job.id)
    assert _wait(client, job.id, timeout=120).status == "cancelled"
    summary, events = tab.shown(service.url, BOB, job.id)
    assert summary.startswith(f"**{job.id}**: cancelled") and "Progress" not in summary and events[0][2] == "Fine-tuning job cancelled"


def test_the_ui_has_a_jobs_tab_and_talks_to_the_operators_service_only(tmp_path, monkeypatch):
    pytest.importorskip("gradio", reason="the ui extra is installed by make test")
    from ui import service as tab
    from ui.app import App, build
    from ui.workspace import Workspace

    monkeypatch.setenv("TRAINER_API_URL", "http://127.0.0.1:9/v1")
    ids = {getattr(block, "elem_id", None): block for block in build(App(Workspace(tmp_path, sandbox=True))).blocks.values()}
    assert {"tab-jobs", "service-jobs", "service-cancel", "service-events"} <= set(ids)
    assert ids["service-url"].value == "http://127.0.0.1:9/v1" and not ids["service-url"].interactive
    assert tab.listed("http://169.254.169.254/latest", "k") == ([], "**this UI talks to http://127.0.0.1:9/v1 only (TRAINER_API_URL)**")
    rows, said = tab.listed("http://127.0.0.1:9/v1", "k")
    assert rows == [] and "cannot be reached" in said


@pytest.mark.integration
def test_the_docker_healthcheck_asks_the_services_health(service, tmp_path):
    """The image's HEALTHCHECK (docker/healthcheck.py) in API mode: healthy while the service answers /health on its
    --port, not with nothing listening there."""
    sys.path.insert(0, str(REPO / "docker"))
    from healthcheck import main as healthcheck

    cmdline = tmp_path / "cmdline"
    for port, healthy in ((service.port, 0), (_free_port(), 1)):
        cmdline.write_bytes(b"\0".join([b"/opt/venv/bin/python", b"/opt/venv/bin/trainer", b"api", b"--models", b"/data/m.yaml",
                                         b"--port", str(port).encode()]))
        assert healthcheck(str(cmdline)) == healthy


@pytest.mark.integration
def test_cancel_mid_run_stops_the_training(tmp_path, start_service):
    api = start_service()
    client = api.client()
    train = _upload(client, tmp_path, "train.jsonl")
    job = client.fine_tuning.jobs.create(training_file=train.id, model="tiny", hyperparameters={"n_epochs": 50, "batch_size": 1})
    deadline = time.time() + 300
    while not [e for e in client.fine_tuning.jobs.list_events(job.id).data if e.type == "metrics"]:
        assert time.time() < deadline and client.fine_tuning.jobs.retrieve(job.id).status not in FINAL
        time.sleep(0.5)
    client.fine_tuning.jobs.cancel(job.id)
    job = _wait(client, job.id, timeout=120)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert (api.data / "jobs" / job.id / "exit_code").read_text() == "3"  # trainer's stop: a checkpoint saved, exit 3
    assert client.fine_tuning.jobs.list_events(job.id).data[0].message == "Fine-tuning job cancelled"


@pytest.mark.integration
def test_a_job_survives_kill_9_of_the_service_and_resumes_from_its_checkpoint(tmp_path, start_service):
    """The service and its job are killed as a machine going down would kill them; the restarted service resumes the
    job from its newest checkpoint and it succeeds, every event told before still there, with the adapter an
    uninterrupted run of the same config gives."""
    api = start_service(save_every=4)
    client = api.client()
    train = _upload(client, tmp_path, "train.jsonl")
    job = client.fine_tuning.jobs.create(training_file=train.id, model="tiny", hyperparameters={"n_epochs": 4, "batch_size": 1})
    run = api.data / "jobs" / job.id / "run"
    deadline = time.time() + 300
    while not list((run / "checkpoints").glob("step-*/trainer_state.json")):
        assert time.time() < deadline and client.fine_tuning.jobs.retrieve(job.id).status not in FINAL
        time.sleep(0.2)
    told = [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    pid = _job_pids(api)[job.id]
    api.kill()
    os.killpg(pid, signal.SIGKILL)  # the job's wrapper and trainer: its own process group
    killed_at = time.time()
    api.start()
    job = _wait(api.client(), job.id)
    print(f"\nrestart: killed mid-job, succeeded {time.time() - killed_at:.1f} s after the restart")
    events = api.client().fine_tuning.jobs.list_events(job.id, limit=100).data
    assert job.status == "succeeded", job.error
    assert set(told) <= {e.id for e in events}
    assert any("queued to resume" in e.message for e in events) and any("resumed from its newest checkpoint" in e.message for e in events)
    assert "Resuming from" in (api.data / "jobs" / job.id / "log.txt").read_text()
    assert json.loads((run / "summary.json").read_text())["steps"] == 48
    # trainer's exact resume: the same adapter as the same config trained without a stop
    assert _same_adapter(run, _train_straight(run, tmp_path))


def _first_step(run: Path, deadline: float) -> None:
    """Wait until the run has logged a training step (read from its metrics.jsonl: sooner than the events)."""
    while not any('"loss"' in line for line in ((run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else [])):
        assert time.time() < deadline, "the job logged no step in time"
        time.sleep(0.1)


def _same_adapter(run: Path, other: Path) -> bool:
    from safetensors.torch import load_file

    mine, theirs = (load_file(d / "model" / "adapter_model.safetensors") for d in (run, other))
    return mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)


@pytest.mark.integration
def test_pause_then_resume_ends_with_the_adapter_of_an_uninterrupted_run(tmp_path, start_service):
    """client.fine_tuning.jobs.pause: the training saves a checkpoint and stops (exit 3), the job reads `paused` and
    stays so; resume queues it again and it continues from that checkpoint to the adapter the same config gives
    without a stop. A finished job can be neither paused nor resumed."""
    import openai

    api = start_service()
    client = api.client()
    train = _upload(client, tmp_path, "train.jsonl")
    job = client.fine_tuning.jobs.create(training_file=train.id, model="tiny", hyperparameters={"n_epochs": 4, "batch_size": 1})
    run = api.data / "jobs" / job.id / "run"
    with pytest.raises(openai.BadRequestError, match="only a paused job can be resumed"):
        client.fine_tuning.jobs.resume(job.id)
    _first_step(run, time.time() + 300)
    asked = time.time()
    assert client.fine_tuning.jobs.pause(job.id).status in ("running", "paused")  # running until its checkpoint is saved
    job = _wait(client, job.id, until=("paused", *FINAL), timeout=120)
    print(f"\npause: paused {time.time() - asked:.1f} s after it was asked")
    assert job.status == "paused" and job.fine_tuned_model is None
    assert (api.data / "jobs" / job.id / "exit_code").read_text() == "3"
    from trainer.checkpoint import complete_checkpoints

    paused_at = int(complete_checkpoints(run)[-1].name.split("-")[1])
    assert 0 < paused_at < 48
    time.sleep(1.5)  # three turns of the queue: a paused job is not started again by itself
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused" and job.id not in _job_pids(api)
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]  # every page
    assert f"Fine-tuning job paused with a checkpoint at step {paused_at}; resume continues from there" in messages
    assert "Fine-tuning job resumed from its newest checkpoint" in messages
    assert "Resuming from" in (api.data / "jobs" / job.id / "log.txt").read_text()
    assert json.loads((run / "summary.json").read_text())["steps"] == 48
    for call in (client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume):
        with pytest.raises(openai.BadRequestError):
            call(job.id)
    assert _same_adapter(run, _train_straight(run, tmp_path))


@pytest.mark.integration
@pytest.mark.slow  # about 2 minutes on two busy cores: the job trains under the load, then once more alone
def test_32_clients_list_and_retrieve_while_a_job_trains(tmp_path, start_service):
    """32 clients, each its own official client, list and retrieve files, jobs and events for as long as a job trains:
    every answer is right (no 5xx, no error at all), and the job's losses are those of the same config trained alone."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    api = start_service()
    client = api.client()
    train = _upload(client, tmp_path, "train.jsonl")
    job = client.fine_tuning.jobs.create(training_file=train.id, model="tiny", hyperparameters={"n_epochs": 4, "batch_size": 1})
    run = api.data / "jobs" / job.id / "run"
    _first_step(run, time.time() + 300)

    def hammer(number: int) -> tuple[list[float], int]:
        mine, took, calls = api.client(), [], 0
        while (status := mine.fine_tuning.jobs.retrieve(job.id).status) == "running":
            for call, check in ((lambda: mine.files.list(), lambda r: train.id in [f.id for f in r.data]),
                                (lambda: mine.files.retrieve(train.id), lambda r: r.id == train.id and r.bytes == train.bytes),
                                (lambda: mine.fine_tuning.jobs.list(limit=5), lambda r: r.data[0].id == job.id),
                                (lambda: mine.fine_tuning.jobs.retrieve(job.id), lambda r: r.id == job.id and r.status in ("running", "succeeded")),
                                (lambda: mine.fine_tuning.jobs.list_events(job.id, limit=10), lambda r: 4 <= len(r.data) <= 10)):  # created .. started, then steps
                started = time.perf_counter()
                answer = call()  # any error status raises: the test fails on it
                took.append(time.perf_counter() - started)
                assert check(answer), (number, answer)
                calls += 1
        assert status == "succeeded", status
        return took, calls

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(hammer, range(32)))
    took = sorted(t for times, _ in results for t in times)
    assert all(calls >= 5 for _, calls in results)  # every client was answered while the job trained
    print(f"\nload: 32 clients, {len(took)} requests while the job trained, p50 {statistics.median(took) * 1000:.0f} ms, "
          f"p95 {took[int(len(took) * 0.95)] * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    losses = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for d in (run, _train_straight(run, tmp_path))]
    assert len(losses[0]) == 48 and losses[0] == losses[1]

