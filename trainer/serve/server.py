"""The HTTP server process around the app: uvicorn, stopping as a service should.

On SIGTERM (or Ctrl-C) it stops accepting connections, answers the queued requests with a 503 at once, gives the
answer being generated SHUTDOWN_GRACE_S to finish, and exits 0. Plain uvicorn cancels whatever still runs after
its graceful timeout (the clients see a dropped connection) and then re-raises the signal (exit 143).
"""
from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from trainer.serve.engines import Worker

SHUTDOWN_GRACE_S = 30.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker: Worker):
        super().__init__(config)
        self.worker = worker

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.worker.close(SHUTDOWN_GRACE_S)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: object) -> None:
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        # a stop that was asked for and carried out is a clean exit, not death by the signal uvicorn would re-raise
        self._captured_signals.clear()


def run_server(app: FastAPI, worker: Worker, host: str, port: int) -> None:
    # uvicorn's own limit only backs ours up: by then every request has been answered or stopped
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S) + 10)
    DrainingServer(config, worker).run()


class _Router(uvicorn.Server):
    def handle_exit(self, sig: int, frame: object) -> None:
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        self._captured_signals.clear()  # a stop that was asked for is a clean exit (see DrainingServer)


def run_router(app: ASGIApp, host: str, port: int) -> None:
    """trainer.serve.router's app: on SIGTERM uvicorn stops accepting, lets the answers in flight finish (within
    SHUTDOWN_GRACE_S), and returns; the caller then stops the engines."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
                            lifespan="on")
    _Router(config).run()
