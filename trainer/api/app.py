"""The HTTP side of `trainer api`: OpenAI's files, fine_tuning.jobs (with events and checkpoints), models and chat
completions, each owner seeing only its own (another owner's are answered 404, as missing ones). Errors are OpenAI's
error objects (trainer/serve/app.py's), so the official client raises its usual exceptions."""
from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from trainer.api import jobspec, queue
from trainer.api.catalog import Catalog
from trainer.api.chat import LoadedModels, base_source, run_source
from trainer.api.keys import Keys
from trainer.api.store import ACTIVE, FileRow, JobRow, Store
from trainer.api.uploads import UploadProblem, count_lines, jsonl_problem, receive_upload
from trainer.errors import UserError
from trainer.serve.app import ChatRequest, Guard, ServeLimits, add_error_handlers, chat_completion, error_response


@dataclass(frozen=True)
class ApiLimits:
    max_upload_bytes: int = 512 * 1024 * 1024
    upload_seconds: float = 3600.0  # an upload must arrive within this
    max_files: int = 1000  # per owner
    max_active_jobs: int = 8  # per owner: validating, queued, running or paused
    max_page: int = 100  # the most rows a list answers at once
    trust_graders: bool = False  # clients' python and score_model graders are taken
    chat: ServeLimits = ServeLimits()


@dataclass
class Service:
    store: Store
    queue: queue.JobQueue
    catalog: Catalog
    learning_rates: dict[str, float]  # each base model's learning rate, for learning_rate_multiplier 1
    data_dir: Path
    limits: ApiLimits
    models: LoadedModels


def create_app(service: Service, keys: Keys) -> FastAPI:
    app = FastAPI(title="trainer api", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    add_error_handlers(app)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        if first.get("type") == "extra_forbidden":  # a field OpenAI may know but this service does not take
            return error_response(400, f"{where}: not a field this service takes (docs/coming-from-openai.md lists what is supported)",
                                  param=where, code="unsupported_parameter")
        return error_response(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None)

    _file_routes(app, service)
    _job_routes(app, service)
    _grader_routes(app, service)
    _model_routes(app, service)
    app.add_middleware(_Owners, keys=keys, limits=service.limits)
    return app


def _owner(request: Request) -> str:
    return str(request.scope["state"]["owner"])


def _not_found(what: str, ident: str) -> JSONResponse:
    return error_response(404, f"no {what} {ident!r}", kind="invalid_request_error", code=f"{what.replace(' ', '_')}_not_found")


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


class _Owners:
    """Every request: the owner of its API key (401 without a valid one, when keys are set), kept in scope["state"].
    Uploads are streamed by their route with their own limits; every other body goes through trainer serve's Guard
    (a Content-Length, at most the JSON limit, arriving in time)."""

    def __init__(self, app: ASGIApp, keys: Keys, limits: ApiLimits):
        self.app, self.keys = app, keys
        self.guarded = Guard(app, None, limits.chat)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        owner = self.keys.owner(headers.get("authorization", ""))
        if owner is None and scope["path"] != "/health":
            await error_response(401, "a valid API key is needed: send the header Authorization: Bearer <key>",
                                 kind="authentication_error", code="invalid_api_key")(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = owner
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files":
            await self.app(scope, receive, send)
        else:
            await self.guarded(scope, receive, send)


def _file_routes(app: FastAPI, service: Service) -> None:
    store, limits = service.store, service.limits

    @app.get("/health", response_model=None)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": service.catalog.names()}

    @app.post("/v1/files", response_model=None)
    async def upload(request: Request) -> JSONResponse | dict[str, Any]:
        owner = _owner(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_upload_bytes + 64 * 1024:
            return error_response(413, f"the file is larger than this service accepts ({limits.max_upload_bytes} bytes)",
                                  param="file", code="file_too_large")  # answered before a byte of it is read
        if store.count_files(owner) >= limits.max_files:
            return error_response(429, f"you have {limits.max_files} files, the most this service keeps for one owner: delete some",
                                  kind="rate_limit_error", code="too_many_files")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        target = service.data_dir / "files" / f"{file_id}.jsonl"
        try:
            got = await receive_upload(request.stream(), request.headers.get("content-type", ""), target,
                                       limits.max_upload_bytes, limits.upload_seconds)
            purpose = got.fields.get("purpose")
            if purpose != "fine-tune":
                raise UploadProblem(400, f"purpose {purpose!r}: this service takes fine-tune files only", "purpose")
            problem = await run_in_threadpool(jsonl_problem, target, got.filename or file_id)
            if problem is None and await run_in_threadpool(count_lines, target) == 0:
                problem = f"{got.filename}: the file holds no records"
            if problem is not None:
                raise UploadProblem(400, problem, "file")
        except UploadProblem as exc:
            target.unlink(missing_ok=True)
            return error_response(exc.status, str(exc), param=exc.param,
                                  code="file_too_large" if exc.status == 413 else "invalid_file")
        row = FileRow(file_id, owner, got.filename or file_id, "fine-tune", got.bytes, int(time.time()), str(target))
        store.add_file(row)
        return row.public()

    @app.get("/v1/files", response_model=None)
    async def list_files(request: Request, purpose: str | None = None, after: str | None = None,
                         limit: int = Query(100, ge=1, le=10_000), order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
        rows, more = store.files(_owner(request), purpose, after, min(limit, limits.max_page * 10), order == "desc")
        return _page([r.public() for r in rows], more)

    @app.get("/v1/files/{file_id}", response_model=None)
    async def retrieve_file(request: Request, file_id: str) -> JSONResponse | dict[str, Any]:
        row = store.file(_owner(request), file_id)
        return row.public() if row else _not_found("file", file_id)

    @app.get("/v1/files/{file_id}/content", response_model=None)
    async def file_content(request: Request, file_id: str) -> JSONResponse | FileResponse:
        row = store.file(_owner(request), file_id)
        if row is None or not Path(row.path).is_file():
            return _not_found("file", file_id)
        return FileResponse(row.path, media_type="application/octet-stream", filename=row.filename)

    @app.delete("/v1/files/{file_id}", response_model=None)
    async def delete_file(request: Request, file_id: str) -> JSONResponse | dict[str, Any]:
        row = store.file(_owner(request), file_id)
        if row is None:
            return _not_found("file", file_id)
        if store.file_in_use(file_id):
            return error_response(400, f"{file_id} is used by a job that has not finished: cancel it first, or delete the file later",
                                  param="file_id", code="file_in_use")
        store.delete_file(row.owner, file_id)
        Path(row.path).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}


class _Missing(Exception):
    """What a route needs is not there (or is another owner's): answered 404."""

    def __init__(self, what: str, ident: str):
        super().__init__(what, ident)
        self.what, self.ident = what, ident


def _owned_job(request: Request, job_id: str) -> JobRow:
    """The job of the path, if it is the caller's: a dependency of every route below /v1/fine_tuning/jobs/{job_id}."""
    service: Service = request.app.state.service
    job = service.store.job(job_id, _owner(request))
    if job is None:
        raise _Missing("fine-tuning job", job_id)
    return job


OwnedJob = Annotated[JobRow, Depends(_owned_job)]  # module-level: FastAPI reads the routes' annotations from here


def _job_routes(app: FastAPI, service: Service) -> None:
    store, limits = service.store, service.limits

    @app.exception_handler(_Missing)
    async def missing(request: Request, exc: _Missing) -> JSONResponse:
        return _not_found(exc.what, exc.ident)

    def _job_now(job_id: str) -> dict[str, Any]:
        now = store.job(job_id)
        assert now is not None  # jobs are never deleted
        return now.public()

    @app.post("/v1/fine_tuning/jobs", response_model=None)
    async def create_job(request: Request, body: jobspec.CreateJob) -> JSONResponse | dict[str, Any]:
        owner = _owner(request)
        base = service.catalog.find(body.model)
        if base is None:
            return error_response(400, f"model {body.model!r} is not trained here; the models this service trains: "
                                  f"{', '.join(service.catalog.names())}", param="model", code="model_not_found")
        try:
            asked = jobspec.chosen_hyperparameters(body, limits.trust_graders)
        except jobspec.Refused as exc:
            return error_response(400, str(exc), param=exc.param, code="unsupported_parameter")
        files: dict[str, FileRow | None] = {}
        for param, file_id in (("training_file", body.training_file), ("validation_file", body.validation_file)):
            if file_id is None:
                continue
            row = store.file(owner, file_id)
            if row is None or row.purpose != "fine-tune":
                return error_response(400, f"{param}: no fine-tune file {file_id!r} (upload it with client.files.create(..., purpose='fine-tune'))",
                                      param=param, code="invalid_file")
            files[param] = row
        if store.count_active(owner) >= limits.max_active_jobs:
            return error_response(429, f"you have {limits.max_active_jobs} jobs not yet finished, the most this service takes "
                                  "from one owner: wait for one to end, or cancel one", kind="rate_limit_error", code="too_many_jobs")
        train = files["training_file"]
        assert train is not None
        examples = await run_in_threadpool(count_lines, Path(train.path))
        resolved = jobspec.resolve(asked, examples)
        seed = body.seed if body.seed is not None else jobspec.new_seed()
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        folder = service.data_dir / "jobs" / job_id
        validation = files.get("validation_file")
        text = jobspec.job_config(base, service.learning_rates[base.name], resolved, seed, train.path,
                                  validation.path if validation else None, str(folder / "run"))
        try:  # trainer's own checks of the settings: a value it would refuse is the client's 400 now, not a failed job later
            from trainer.config.validate import parse_config

            parse_config(text, f"{job_id}/config.yaml", check_files=False)
        except UserError as exc:
            return error_response(400, exc.render(limit=10), param="hyperparameters", code="invalid_hyperparameters")
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(text, encoding="utf-8")
        job = JobRow(job_id, owner, int(time.time()), base.name, resolved.method(), resolved.hyperparameters(), train.id,
                     validation.id if validation else None, body.suffix, seed, body.metadata, str(folder))
        store.add_job(job)
        store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        store.add_event(job_id, f"Validating training file: {train.id}" + (f" and validation file: {validation.id}" if validation else ""))
        return job.public()

    @app.get("/v1/fine_tuning/jobs", response_model=None)
    async def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1)) -> dict[str, Any]:
        rows, more = store.jobs(_owner(request), after, min(limit, limits.max_page))
        return _page([r.public() for r in rows], more)

    @app.get("/v1/fine_tuning/jobs/{job_id}", response_model=None)
    async def retrieve_job(job: OwnedJob) -> dict[str, Any]:
        return job.public()

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", response_model=None)
    async def cancel_job(job: OwnedJob) -> JSONResponse | dict[str, Any]:
        if job.status not in ACTIVE:
            return error_response(400, f"the job has already ended ({job.status})", param="fine_tuning_job_id", code="job_not_cancellable")
        service.queue.cancel(job)
        return _job_now(job.id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause", response_model=None)
    async def pause_job(job: OwnedJob) -> JSONResponse | dict[str, Any]:
        if job.status not in ("queued", "running") or job.cancel_requested:
            return error_response(400, f"only a queued or running job can be paused; this one is {'being cancelled' if job.cancel_requested else job.status}",
                                  param="fine_tuning_job_id", code="job_not_pausable")
        service.queue.pause(job)
        return _job_now(job.id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume", response_model=None)
    async def resume_job(job: OwnedJob) -> JSONResponse | dict[str, Any]:
        if not service.queue.resume(job):
            now = store.job(job.id)
            pausing = now is not None and now.status == "running" and now.pause_requested
            return error_response(400, "the job is still saving its checkpoint to pause: resume it once it reads paused" if pausing
                                  else f"only a paused job can be resumed; this one is {now.status if now else job.status}",
                                  param="fine_tuning_job_id", code="job_not_resumable")
        return _job_now(job.id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=None)
    async def list_events(job: OwnedJob, after: str | None = None, limit: int = Query(20, ge=1)) -> dict[str, Any]:
        events, more = store.events(job.id, after, min(limit, limits.max_page))
        return {"object": "list", "data": events, "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", response_model=None)
    async def list_checkpoints(job: OwnedJob, after: str | None = None, limit: int = Query(10, ge=1)) -> dict[str, Any]:
        found = _checkpoints(job)
        if after is not None:
            found = found[next((i + 1 for i, c in enumerate(found) if c["id"] == after), len(found)):]
        page = found[: min(limit, limits.max_page)]
        return _page(page, len(found) > len(page))


def _checkpoints(job: JobRow) -> list[dict[str, Any]]:
    """The run's complete checkpoints, newest first, with the metrics logged at their step."""
    from trainer import childproc
    from trainer.checkpoint import STATE_FILE, complete_checkpoints

    run = queue.run_dir(job)
    rows = childproc.read_jsonl(run / "metrics.jsonl")
    out = []
    for path in reversed(complete_checkpoints(run)):
        step = int(path.name.split("-")[1])
        train = [r for r in rows if "loss" in r and r["step"] <= step]
        valid = [r for r in rows if "eval_loss" in r and r["step"] <= step]
        metrics: dict[str, Any] = {"step": step}
        if train:
            metrics["train_loss"] = train[-1]["loss"]
        if valid:
            metrics["valid_loss"] = valid[-1]["eval_loss"]
        out.append({"id": f"ftckpt-{job.id[-24:]}-{step}", "object": "fine_tuning.job.checkpoint",
                    "created_at": int((path / STATE_FILE).stat().st_mtime), "fine_tuning_job_id": job.id, "step_number": step,
                    "fine_tuned_model_checkpoint": f"{queue.model_name(job)}:ckpt-step-{step}", "metrics": metrics})
    return out


def _grader_routes(app: FastAPI, service: Service) -> None:
    """OpenAI's /v1/fine_tuning/alpha/graders: a grader checked (validate) or run on one sample (run), by trainer/graders,
    with the same limits as a reinforcement job's grader."""

    def checked(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("grader"), dict):
            raise jobspec.Refused("grader: a grader object is needed, e.g. {type: string_check, ...}", "grader")
        return jobspec.check_grader(body["grader"], service.limits.trust_graders)

    def refused(exc: jobspec.Refused) -> JSONResponse:
        param = (exc.param or "grader").removeprefix("method.reinforcement.")
        return error_response(400, str(exc), param=param, code="invalid_grader")

    @app.post("/v1/fine_tuning/alpha/graders/validate", response_model=None)
    async def validate_grader(body: dict[str, Any]) -> JSONResponse | dict[str, Any]:
        try:
            return {"grader": checked(body)}
        except jobspec.Refused as exc:
            return refused(exc)

    @app.post("/v1/fine_tuning/alpha/graders/run", response_model=None)
    async def run_grader(body: dict[str, Any]) -> JSONResponse | dict[str, Any]:
        from trainer.graders import grade, parse_grader

        unknown = set(body) - {"grader", "model_sample", "item"}
        if unknown:
            return error_response(400, f"{sorted(unknown)[0]}: not a field this endpoint takes (grader, model_sample, item)",
                                  param=sorted(unknown)[0], code="unsupported_parameter")
        try:
            data = checked(body)
        except jobspec.Refused as exc:
            return refused(exc)
        sample, item = body.get("model_sample"), body.get("item", {})
        if not isinstance(sample, str):
            return error_response(400, "model_sample: the model's output, a string", param="model_sample")
        if not isinstance(item, dict):
            return error_response(400, "item: the data line the grader reads as item, an object", param="item")
        grader = parse_grader(data)
        started = time.perf_counter()
        result = await run_in_threadpool(grade, grader, {"output_text": sample}, item)
        return _grader_run(str(data["type"]), grader, result, time.perf_counter() - started)


def _grader_run(kind_name: str, grader: Any, result: Any, seconds: float) -> dict[str, Any]:
    """A grade in OpenAI's run answer. A failure sets the flag of its kind (python, model, else other_error), with
    trainer's message in its `_details` field."""
    from trainer.graders.objects import Python, ScoreModel

    errors: dict[str, Any] = {key: False for key in (
        "formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
        "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
        "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error")}
    errors |= {"model_grader_server_error_details": None, "python_grader_runtime_error_details": None, "python_grader_server_error_type": None}
    if result.error is not None:
        kind = "python_grader_runtime_error" if isinstance(grader, Python) else "model_grader_server_error" if isinstance(grader, ScoreModel) else "other_error"
        errors[kind], errors[f"{kind}_details"] = True, result.error
    parts = {name: part.score for name, part in result.parts.items()}
    return {"reward": result.score, "sub_rewards": parts, "model_grader_token_usage_per_model": {},
            "metadata": {"name": grader.name, "type": kind_name, "errors": errors, "execution_time": round(seconds, 4),
                         "scores": parts or {grader.name: result.score}, "token_usage": None, "sampled_model_name": None}}


def _model_routes(app: FastAPI, service: Service) -> None:
    store = service.store

    def tuned(owner: str, name: str) -> JobRow | None:
        return next((j for j in store.succeeded(owner) if j.fine_tuned_model == name), None)

    def model(ident: str, created: int, owner: str) -> dict[str, Any]:
        return {"id": ident, "object": "model", "created": created, "owned_by": owner}

    @app.get("/v1/models", response_model=None)
    async def list_models(request: Request) -> dict[str, Any]:
        owner = _owner(request)
        bases = [model(name, 0, "trainer") for m in service.catalog.models for name in (m.name, *m.aliases)]
        own = [model(j.fine_tuned_model, j.finished_at or j.created_at, owner) for j in store.succeeded(owner) if j.fine_tuned_model]
        return {"object": "list", "data": bases + own}

    @app.get("/v1/models/{name:path}", response_model=None)
    async def retrieve_model(request: Request, name: str) -> JSONResponse | dict[str, Any]:
        owner = _owner(request)
        if service.catalog.find(name) is not None:
            return model(name, 0, "trainer")
        job = tuned(owner, name)
        return model(name, job.finished_at or job.created_at, owner) if job else _not_found("model", name)

    @app.delete("/v1/models/{name:path}", response_model=None)
    async def delete_model(request: Request, name: str) -> JSONResponse | dict[str, Any]:
        job = tuned(_owner(request), name)
        if job is None:
            return _not_found("model", name)
        store.update_job(job.id, fine_tuned_model=None)
        service.models.forget(name)
        shutil.rmtree(queue.run_dir(job) / "model", ignore_errors=True)  # the weights go; the job and its events stay
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse | dict[str, Any]:
        asked = body.model or ""
        job, base = tuned(_owner(request), asked), service.catalog.find(asked)
        if job is not None and job.fine_tuned_model is not None:
            run = queue.run_dir(job)
            worker = await run_in_threadpool(service.models.get, job.fine_tuned_model, lambda: run_source(run))
        elif base is not None:  # an alias and its model share one engine, which answers with the model's own name
            worker = await run_in_threadpool(service.models.get, base.name, lambda: base_source(base))
            body = body.model_copy(update={"model": base.name})
        else:
            names = service.catalog.names() + [j.fine_tuned_model for j in store.succeeded(_owner(request)) if j.fine_tuned_model]
            return error_response(404, f"model {body.model!r} is not served here; chat answers with these: {', '.join(names)}",
                                  param="model", code="model_not_found")
        return await chat_completion(body, request, worker.engine, worker, service.limits.chat)
