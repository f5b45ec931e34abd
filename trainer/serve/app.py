"""An OpenAI-compatible HTTP API over an engine: POST /v1/chat/completions (plain and streamed as
server-sent events), GET /v1/models, GET /health.

FastAPI validates the request shapes; this module turns every rejection into OpenAI's error body
({"error": {"message", "type", "param", "code"}}) with a 4xx status, so the official clients raise
their usual exceptions and the server keeps serving. Limits: the body size, max_tokens, and the number
of messages are bounded by ServeLimits.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

# fastapi is an optional dependency (trainer[serve]); only `trainer serve` imports this module, and says so if it is missing
import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from trainer.callids import CallIds, render_with_call_ids
from trainer.serve.engines import Cancel, Engine, Job, Piece, Sampling, ShuttingDown, Worker
from trainer.serve.toolcalls import answer_tool_calls

T = TypeVar("T")

class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id ... reach the chat template
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, metadata ...)
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)  # greedy unless asked: as trainer generate answers
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 1_000_000
    max_tokens: int = 2048  # the most a request may ask for
    default_max_tokens: int = 512
    max_messages: int = 256
    body_seconds: float = 30.0  # a request body must arrive within this (a Content-Length the body never fills)


def create_app(engine: Engine, api_key: str | None = None, limits: ServeLimits = ServeLimits(),
               worker: Worker | None = None) -> FastAPI:
    """The OpenAI-compatible app: error bodies, the key and size guard, and the routes."""
    app = FastAPI(title="trainer serve", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    _add_routes(app, engine, worker or Worker(engine), limits)
    app.add_middleware(Guard, api_key=api_key, limits=limits)
    return app


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    """OpenAI's error body."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _shutting_down() -> JSONResponse:
    return error_response(503, "the server is shutting down; send the request again when it is back", kind="server_error",
                  code="shutting_down")


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        return error_response(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404 else "invalid_request_error")


class Guard:
    """Every request: the API key (when one is set), and a body with a Content-Length, no larger than the limit, that
    arrives within limits.body_seconds (a client announcing more than it sends would otherwise hold its connection
    for ever). The body is read here and handed to the app as it came. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would stand between a streamed answer and the client's disconnect."""

    def __init__(self, app: ASGIApp, api_key: str | None, limits: ServeLimits):
        self.app, self.api_key, self.limits = app, api_key, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None and scope["method"] == "POST":
            try:
                receive = await self._read_body(receive)
            except TimeoutError:
                problem = error_response(408, f"the request body did not arrive within {self.limits.body_seconds:g} s "
                                 "(is the Content-Length right?)", code="request_timeout")
        if problem is not None:
            await problem(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return error_response(401, "a valid API key is needed: send the header Authorization: Bearer <key>",
                              kind="authentication_error", code="invalid_api_key")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limits.max_body_bytes):
            return error_response(413, f"the request body is larger than {self.limits.max_body_bytes} bytes", code="request_too_large")
        if length is None and scope["method"] == "POST":  # a chunked upload could be of any size
            return error_response(411, "send the request with a Content-Length header", code="length_required")
        return None

    async def _read_body(self, receive: Receive) -> Receive:
        """The whole body within the time limit (TimeoutError otherwise), as a receive that replays it, then
        passes on what comes next (the client's disconnect)."""
        messages: list[ASGIMessage] = []
        with anyio.fail_after(self.limits.body_seconds):
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break

        async def replay() -> ASGIMessage:
            return messages.pop(0) if messages else await receive()

        return replay


def _add_routes(app: FastAPI, engine: Engine, worker: Worker, limits: ServeLimits) -> None:
    # async: these answer on the event loop, never behind generations waiting for a thread
    # (response_model=None: FastAPI would otherwise build a response model from each return annotation)
    @app.get("/health", response_model=None)
    async def health() -> JSONResponse:
        problem = "the server is shutting down" if worker.closing else worker.problem()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "model": engine.model_id, "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok", "model": engine.model_id, "requests": worker.queued()})

    @app.get("/v1/models", response_model=None)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.model_id, "object": "model", "created": 0, "owned_by": "trainer"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse | dict[str, Any]:
        return await chat_completion(body, request, engine, worker, limits)


def _request_problem(body: ChatRequest, engine: Engine, limits: ServeLimits) -> JSONResponse | None:
    """What is wrong with a request before anything is generated, as its error response; None when nothing is."""
    if body.model not in (None, "", engine.model_id):
        return error_response(404, f"model {body.model!r} is not served here; this server serves {engine.model_id!r}",
                      param="model", code="model_not_found")
    if len(body.messages) > limits.max_messages:
        return error_response(400, f"messages: at most {limits.max_messages} messages per request", param="messages")
    max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        return error_response(400, f"max_tokens: {max_tokens} is more than this server allows ({limits.max_tokens})", param="max_tokens")
    for i, tool in enumerate(body.tools or ()):
        problem = _tool_problem(tool)
        if problem is not None:
            return error_response(400, f"tools[{i}]: {problem}", param=f"tools[{i}]")
    return None


def _tool_problem(tool: dict[str, Any]) -> str | None:
    """What is wrong with one tool in OpenAI's shape ({"type": "function", "function": {"name", "parameters"}}),
    its parameters a JSON Schema; None when nothing is."""
    import jsonschema

    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return 'a tool is {"type": "function", "function": {"name": ..., "parameters": {JSON Schema}}}'
    if not isinstance(function.get("name"), str) or not function["name"]:
        return "function.name: a tool needs a name"
    parameters = function.get("parameters", {})
    if not isinstance(parameters, dict):
        return "function.parameters: a JSON Schema object is expected"
    try:
        jsonschema.validators.validator_for(parameters, default=jsonschema.Draft202012Validator).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"function.parameters is not a valid JSON Schema{f' (at {where})' if where else ''}: {exc.message}"
    return None


def _fit_context(prompt_tokens: int, asked: int | None, limits: ServeLimits, context: int | None) -> int | JSONResponse:
    """The max_tokens to generate with, or the 400 when the prompt (and what the request asks for) does not fit the
    model's context; a request without max_tokens gets what is left of the context, up to the default."""
    max_tokens = asked or limits.default_max_tokens
    if context is None:
        return max_tokens
    room = context - prompt_tokens
    if room < 1:
        return error_response(400, f"the prompt is {prompt_tokens} tokens; this model reads at most {context} tokens, prompt and "
                      "answer together: shorten the messages", param="messages", code="context_length_exceeded")
    if asked is not None and asked > room:
        return error_response(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({asked}) exceed the model's context of "
                      f"{context} tokens: ask for at most {room}", param="max_tokens", code="context_length_exceeded")
    return min(max_tokens, room)


async def chat_completion(body: ChatRequest, request: Request, engine: Engine, worker: Worker,
                           limits: ServeLimits) -> JSONResponse | StreamingResponse | dict[str, Any]:
    problem = _request_problem(body, engine, limits)
    if problem is not None:
        return problem
    try:
        messages = [_plain_message(m.model_dump(exclude_none=True)) for m in body.messages]
    except ValueError as exc:
        return error_response(400, str(exc), param="messages")
    try:
        prompt, ids = await run_in_threadpool(render_with_call_ids, engine.prompt, messages, body.tools)  # Mistral's 9-character ids
        ignores_tools = bool(body.tools) and prompt == await run_in_threadpool(engine.prompt, ids.apply(messages), None)
    except Exception as exc:  # the chat template raised (e.g. roles it does not accept)
        return error_response(400, f"the model's chat template cannot lay out these messages: {exc}", param="messages")
    if ignores_tools:
        return error_response(400, "tools: this model's chat template does not show tools to the model, so they would be "
                      "ignored; send the request without tools (or describe them in a system message)", param="tools")
    fitted = _fit_context(await run_in_threadpool(engine.count_tokens, prompt),
                          body.max_completion_tokens or body.max_tokens, limits, engine.context)
    if isinstance(fitted, JSONResponse):
        return fitted
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    sampling = Sampling(fitted, body.temperature, body.top_p, body.seed, stop)
    try:
        generation = _Generation(worker, prompt, sampling)
    except ShuttingDown:
        return _shutting_down()
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    try:
        # the status waits for the first piece: an error before any text is still a 4xx or 503, not a broken stream
        first = await generation.first_or_gone(request)
        if body.stream:
            return _Stream(_events(generation, first, ident, created, engine.model_id, bool(body.tools), ids), generation.cancel)
        pieces = await generation.rest_or_gone(request, first)
    except ShuttingDown:
        return _shutting_down()
    except ValueError as exc:  # e.g. longer than the context
        return error_response(400, str(exc))
    except BaseException:
        generation.cancel.event.set()
        raise
    if generation.cancel.shutdown:
        return _shutting_down()
    if not pieces:  # the client left before its turn
        return error_response(400, "the client went away", code="client_closed")
    text, last = ids.restore("".join(p.text for p in pieces)), pieces[-1]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish = last.finish_reason
    if body.tools:
        content, calls = answer_tool_calls(text, last.calls)
        if calls:
            message = {"role": "assistant", "content": content or None, "tool_calls": calls}
            finish = "tool_calls"
    if any(p.reasoning for p in pieces):  # gpt-oss's analysis channel
        message["reasoning_content"] = "".join(p.reasoning for p in pieces)
    return {"id": ident, "object": "chat.completion", "created": created, "model": engine.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                      "total_tokens": last.prompt_tokens + last.completion_tokens}}


class _Generation:
    """A request's job on the worker, read from the event loop: the worker's thread puts each piece in `inbox`
    (None at the end, or the exception that ended it); `cancel` stops the job when the client goes away."""

    def __init__(self, worker: Worker, prompt: str, sampling: Sampling):
        self.cancel = Cancel()
        self.inbox: asyncio.Queue[Piece | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def deliver(item: Piece | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(self.inbox.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody waits for this answer any more
                pass

        worker.submit(Job(prompt, sampling, self.cancel, deliver))

    async def next(self) -> Piece | None:
        item = await self.inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def first_or_gone(self, request: Request) -> Piece | None:
        """The first piece (None: the answer ended before any), cancelling the job if the client leaves meanwhile."""
        return await self._watching(request, self.next())

    async def rest_or_gone(self, request: Request, first: Piece | None) -> list[Piece]:
        async def rest() -> list[Piece]:
            pieces, piece = [], first
            while piece is not None:
                pieces.append(piece)
                piece = await self.next()
            return pieces

        return await self._watching(request, rest())

    async def _watching(self, request: Request, work: Coroutine[Any, Any, T]) -> T:
        watcher = asyncio.create_task(self._cancel_when_gone(request))
        try:
            return await work
        finally:
            watcher.cancel()

    async def _cancel_when_gone(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.cancel.event.set()


class _Stream(StreamingResponse):
    """Server-sent events that cancel their generation however the response ends: finished, or the client gone
    (Starlette stops iterating then; it would not tell the generation)."""

    def __init__(self, events: AsyncIterator[str], cancel: Cancel):
        super().__init__(events, media_type="text/event-stream")
        self.cancel = cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.event.set()


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates take it: content as one string (OpenAI allows a list of text parts)."""
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content parts of type {part.get('type')!r} are not supported; send text parts only")
            texts.append(part["text"])
        message = {**message, "content": "".join(texts)}
    if message["role"] == "developer":  # OpenAI's newer name for the system role
        message = {**message, "role": "system"}
    return message


async def _events(generation: _Generation, first: Piece | None, ident: str, created: int, model: str,
                  tools: bool, ids: CallIds) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format."""

    def event(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
        chunk: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    def error(message: str, kind: str, code: str | None) -> str:
        return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'param': None, 'code': code}})}\n\n"

    yield event({"role": "assistant", "content": ""})
    text, last, piece = "", Piece(""), first
    try:
        while piece is not None:
            last = piece
            text += piece.text
            if piece.reasoning:
                yield event({"reasoning_content": piece.reasoning})
            if piece.text and not tools:
                yield event({"content": piece.text})
            piece = await generation.next()
    except ShuttingDown as exc:
        yield error(str(exc), "server_error", "shutting_down")
        return
    except ValueError as exc:
        yield error(str(exc), "invalid_request_error", None)
        return
    if generation.cancel.shutdown:
        yield error("the server is shutting down: the answer was stopped", "server_error", "shutting_down")
        return
    finish = last.finish_reason
    if tools:  # a tool call is only known once the answer is complete: sent whole, as one delta
        content, calls = answer_tool_calls(ids.restore(text), last.calls)
        delta: dict[str, Any] = {"content": content} if content else {}
        if calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
            finish = "tool_calls"
        if delta:
            yield event(delta)
    usage = {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
             "total_tokens": last.prompt_tokens + last.completion_tokens}
    yield event({}, finish, usage)
    yield "data: [DONE]\n\n"
