"""What stays of trainer's own HTTP layer in front of llama-server: only what the engine does not do.

- the API key rule and the body limits (trainer.serve.app.Guard: a key off localhost, a Content-Length no larger
  than the limit, a body that arrives in time);
- model names from run names, routed to the engine that serves them: several llama-servers (one per base), and per
  request the LoRA adapter the name stands for (llama-server's "lora" field); /v1/models lists the names;
- OpenAI's error body for what is refused here (bad JSON, an unknown model, max_tokens over the limit) and for what
  the engine refuses (llama-server's own error object is reshaped), and a 503 with an error body, never a hang or a
  dropped connection, when an engine dies under a request or is being restarted.

Everything else (the chat template, sampling, stop tokens, tool-call parsing, streaming, batching) is llama-server's:
the request body goes to it as it came, plus "lora", and its answer comes back as it is sent. A plain ASGI app: a
framework's routing and validation would only add time to each request (measured in bench/serve_throughput.py).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.types import Receive, Scope, Send

from trainer.serve.app import Guard, ServeLimits, error_response
from trainer.serve.llamaserver import EngineProcess

FORWARDED = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True)
class Route:
    name: str  # the model name clients ask for
    engine: EngineProcess
    lora: int | None  # the adapter's id in that engine (None: the engine's GGUF as it is)


def create_router(routes: dict[str, Route], api_key: str | None, limits: ServeLimits) -> Guard:
    return Guard(Router(routes, limits), api_key=api_key, limits=limits)


class Router:
    def __init__(self, routes: dict[str, Route], limits: ServeLimits):
        self.routes, self.limits = routes, limits
        self.http: aiohttp.ClientSession | None = None  # made on the server's event loop (lifespan, or the first request)

    def client(self) -> aiohttp.ClientSession:
        # aiohttp rather than httpx: its C HTTP parser and lean connection pool cost a third of httpx's CPU time per
        # forwarded request (bench/serve_throughput.py, the router's cost)
        if self.http is None:
            # no pool limit: every request waiting in llama-server's queue holds a connection; no read timeout: an answer
            # may take long, and a dead engine closes its connections (the request gets a 503 then)
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                                              timeout=aiohttp.ClientTimeout(total=None, connect=10.0),
                                              auto_decompress=False, skip_auto_headers=("User-Agent",))
        return self.http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            await self._health()(scope, receive, send)
        elif method == "GET" and path == "/v1/models":
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "trainer"} for name in self.routes]
            await _json({"object": "list", "data": data})(scope, receive, send)
        elif method == "POST" and path in FORWARDED:
            await self._forward(scope, receive, send)
        else:
            await error_response(404, f"{method} {path} is not served here; the API is POST /v1/chat/completions, POST "
                                 "/v1/completions, GET /v1/models and GET /health", kind="not_found_error")(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.http is not None:
                    await self.http.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _health(self) -> Any:
        engines = list({id(r.engine): r.engine for r in self.routes.values()}.values())
        states = [{"models": [m.name for m in e.spec.models], "pid": e.process.pid if e.process else None, "port": e.port,
                   "restarts": e.restarts, "problem": e.problem} for e in engines]
        problems = [f"{e.spec.names}: {e.problem}" for e in engines if e.problem is not None]
        if problems:
            return _json({"status": "unavailable", "models": list(self.routes), "engines": states, "reason": "; ".join(problems)}, 503)
        return _json({"status": "ok", "models": list(self.routes), "engines": states})

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _body(receive)
        request, problem = self._request(body)
        if problem is not None:
            await problem(scope, receive, send)
            return
        assert request is not None
        route, data = request
        port = route.engine.port
        if port is None:
            await _unavailable(route.engine.problem or "the engine is not answering")(scope, receive, send)
            return
        alias = route.engine.spec.alias
        rename = None if alias == route.name else (b'"model":' + json.dumps(alias).encode(), b'"model":' + json.dumps(route.name).encode())
        forward = asyncio.ensure_future(self._exchange(port, scope["path"], data, rename, scope, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        # the client leaving cancels the exchange, which closes the engine's connection: llama-server then stops
        # generating that answer
        await asyncio.wait((forward, gone), return_when=asyncio.FIRST_COMPLETED)
        for task in (forward, gone):
            task.cancel()
        if forward.done() and not forward.cancelled() and forward.exception() is not None:
            raise forward.exception()  # type: ignore[misc]

    def _request(self, body: bytes) -> tuple[tuple[Route, bytes] | None, Any]:
        """(the route, the body for the engine), or (None, the error response)."""
        try:
            data = json.loads(body)
        except ValueError:
            return None, error_response(400, "the request body is not valid JSON", code="invalid_json")
        if not isinstance(data, dict):
            return None, error_response(400, "the request body must be a JSON object")
        model = data.get("model")
        if model in (None, "") and len(self.routes) == 1:
            model = next(iter(self.routes))
        route = self.routes.get(model) if isinstance(model, str) else None
        if route is None:
            served = ", ".join(repr(name) for name in self.routes)
            said = "a model is needed" if model in (None, "") else f"model {model!r} is not served here"
            return None, error_response(404, f"{said}; this server serves {served}", param="model", code="model_not_found")
        for key in ("max_tokens", "max_completion_tokens", "n_predict"):
            asked = data.get(key)
            if isinstance(asked, int) and not isinstance(asked, bool) and asked > self.limits.max_tokens:
                return None, error_response(400, f"{key}: {asked} is more than this server allows ({self.limits.max_tokens})", param=key)
        if not any(isinstance(data.get(key), int) for key in ("max_tokens", "max_completion_tokens", "n_predict")):
            data["max_tokens"] = self.limits.default_max_tokens  # llama-server's own default is until the context is full
        data["model"] = model
        if route.lora is not None:
            data["lora"] = [{"id": route.lora, "scale": 1.0}]
        else:
            data.pop("lora", None)  # the adapters of a server are chosen by model name only
        return (route, json.dumps(data).encode()), None

    async def _exchange(self, port: int, path: str, body: bytes, rename: tuple[bytes, bytes] | None, scope: Scope, send: Send) -> None:
        """The engine's answer to the client: streamed as it comes, or read whole first (so that an engine dying
        midway still gets the client a 503 with an error body, not half an answer). `rename`: the engine's name for
        itself in its answers ("model":"<alias>", as llama-server writes JSON: no spaces) and the asked model's, to
        put in its place (an adapter's requests are answered under the adapter's name)."""
        started = False
        try:
            async with self.client().post(f"http://127.0.0.1:{port}{path}", data=body,
                                          headers={"content-type": "application/json"}) as response:
                if response.status >= 400:
                    await _engine_error(response.status, await response.read())(scope, _no_receive, send)
                    return
                stream = response.headers.get("content-type", "").startswith("text/event-stream")
                if not stream:
                    content = await response.read()
                    if rename is not None:
                        content = content.replace(*rename)
                    kind = response.headers.get("content-type", "application/json").encode("latin-1")
                    # sent as ASGI messages: a Starlette Response object costs more than the forwarding itself
                    await send({"type": "http.response.start", "status": response.status,
                                "headers": [(b"content-type", kind), (b"content-length", str(len(content)).encode())]})
                    await send({"type": "http.response.body", "body": content, "more_body": False})
                    return
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
                started = True
                pending = b""  # with `rename`: the start of an event not yet complete (an event ends with a blank line)
                async for chunk in response.content.iter_any():
                    if rename is not None:
                        pending += chunk
                        end = pending.rfind(b"\n\n") + 2 if b"\n\n" in pending else 0
                        chunk, pending = pending[:end].replace(*rename), pending[end:]
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": pending, "more_body": False})
        except aiohttp.ClientError as exc:
            message = f"the engine stopped while answering ({type(exc).__name__}); send the request again"
            if not started:
                await _unavailable(message)(scope, _no_receive, send)
                return
            event = {"error": {"message": message, "type": "server_error", "param": None, "code": "engine_failed"}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(), "more_body": False})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _no_receive() -> dict[str, Any]:  # a response sent from the exchange task never reads the request again
    await asyncio.Event().wait()
    return {}


def _json(content: Any, status: int = 200) -> Any:
    return _raw(status, json.dumps(content).encode(), "application/json")


def _raw(status: int, content: bytes, media_type: str) -> Any:
    from starlette.responses import Response

    return Response(content, status_code=status, media_type=media_type)


def _unavailable(reason: str) -> Any:
    response = error_response(503, f"the model is not available right now: {reason}", kind="server_error", code="engine_unavailable")
    response.headers["retry-after"] = "2"
    return response


def _engine_error(status: int, content: bytes) -> Any:
    """llama-server's error ({"error": {"code": 400, "message", "type"}}) in OpenAI's shape (message, type, param, code)."""
    try:
        error = json.loads(content).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = str(error.get("message") or content.decode("utf-8", "replace")[:500] or f"the engine answered {status}")
    kind = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
    code = error.get("code")
    if status == 400 and "context" in message and ("exceed" in message or "size" in message):
        code = "context_length_exceeded"
    return error_response(status, message, kind=kind, code=code if isinstance(code, str) else None)
