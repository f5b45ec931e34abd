"""An OpenAI-compatible HTTP API over an engine: POST /v1/chat/completions (plain and streamed as
server-sent events), GET /v1/models, GET /health.

FastAPI validates the request shapes; this module turns every rejection into OpenAI's error body
({"error": {"message", "type", "param", "code"}}) with a 4xx status, so the official clients raise
their usual exceptions and the server keeps serving. Limits: the body size, max_tokens, and the number
of messages are bounded by ServeLimits.
"""
from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer.serve.engines import Cancel, Engine, Piece, Sampling, Worker
from trainer.serve.toolcalls import split_tool_calls

if TYPE_CHECKING:  # fastapi is an optional dependency (trainer[serve]), imported when an app is made
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.responses import Response


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


def create_app(engine: Engine, api_key: str | None = None, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The OpenAI-compatible app: error bodies, the key and size guard, and the routes."""
    from fastapi import FastAPI

    app = FastAPI(title="trainer serve", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_guard(app, api_key, limits)
    _add_routes(app, engine, Worker(engine), limits)
    return app


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    """OpenAI's error body."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        return _error(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404 else "invalid_request_error")


def _add_guard(app: FastAPI, api_key: str | None, limits: ServeLimits) -> None:
    """Every request: the API key (when one is set) and a bounded body with a Content-Length."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "a valid API key is needed: send the header Authorization: Bearer <key>",
                              kind="authentication_error", code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return _error(413, f"the request body is larger than {limits.max_body_bytes} bytes", code="request_too_large")
        if length is None and request.method == "POST":  # a chunked upload could be of any size
            return _error(411, "send the request with a Content-Length header", code="length_required")
        return await call_next(request)


def _add_routes(app: FastAPI, engine: Engine, worker: Worker, limits: ServeLimits) -> None:
    # response_model=None: FastAPI would otherwise build a response model from each return annotation
    @app.get("/health", response_model=None)
    def health() -> dict[str, str]:
        return {"status": "ok", "model": engine.model_id}

    @app.get("/v1/models", response_model=None)
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.model_id, "object": "model", "created": 0, "owned_by": "trainer"}]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: ChatRequest) -> JSONResponse | StreamingResponse | dict[str, Any]:
        return _chat_completion(body, engine, worker, limits)


def _request_problem(body: ChatRequest, engine: Engine, limits: ServeLimits) -> JSONResponse | None:
    """What is wrong with a request before anything is generated, as its error response; None when nothing is."""
    if body.model not in (None, "", engine.model_id):
        return _error(404, f"model {body.model!r} is not served here; this server serves {engine.model_id!r}",
                      param="model", code="model_not_found")
    if len(body.messages) > limits.max_messages:
        return _error(400, f"messages: at most {limits.max_messages} messages per request", param="messages")
    max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        return _error(400, f"max_tokens: {max_tokens} is more than this server allows ({limits.max_tokens})", param="max_tokens")
    return None


def _chat_completion(body: ChatRequest, engine: Engine, worker: Worker, limits: ServeLimits) -> JSONResponse | StreamingResponse | dict[str, Any]:
    from fastapi.responses import StreamingResponse

    problem = _request_problem(body, engine, limits)
    if problem is not None:
        return problem
    try:
        messages = [_plain_message(m.model_dump(exclude_none=True)) for m in body.messages]
    except ValueError as exc:
        return _error(400, str(exc), param="messages")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
    sampling = Sampling(max_tokens, body.temperature, body.top_p, body.seed, stop)
    try:
        prompt = engine.prompt(messages, body.tools)
    except Exception as exc:  # the chat template raised (e.g. roles it does not accept)
        return _error(400, f"the model's chat template cannot lay out these messages: {exc}", param="messages")
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return StreamingResponse(_events(worker, prompt, sampling, ident, created, engine.model_id, bool(body.tools)),
                                 media_type="text/event-stream")
    try:
        pieces = list(worker.stream(prompt, sampling, Cancel()))
    except ValueError as exc:  # e.g. longer than the context
        return _error(400, str(exc))
    text, last = "".join(p.text for p in pieces), pieces[-1]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish = last.finish_reason
    if body.tools:
        content, calls = split_tool_calls(text)
        if calls:
            message = {"role": "assistant", "content": content or None, "tool_calls": calls}
            finish = "tool_calls"
    return {"id": ident, "object": "chat.completion", "created": created, "model": engine.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                      "total_tokens": last.prompt_tokens + last.completion_tokens}}


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


def _events(worker: Worker, prompt: str, sampling: Sampling, ident: str, created: int, model: str,
            tools: bool) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format; the client going away cancels the generation."""
    cancel = Cancel()

    def event(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
        chunk: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    try:
        yield event({"role": "assistant", "content": ""})
        text, last = "", Piece("")
        for piece in worker.stream(prompt, sampling, cancel):
            last = piece
            text += piece.text
            if piece.text and not tools:
                yield event({"content": piece.text})
        finish = last.finish_reason
        if tools:  # a tool call is only known once the answer is complete: sent whole, as one delta
            content, calls = split_tool_calls(text)
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
    except ValueError as exc:
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'invalid_request_error', 'param': None, 'code': None}})}\n\n"
    finally:
        cancel.event.set()
