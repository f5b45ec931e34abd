"""Serving finished runs from the Results tab: one `trainer serve --run A --run B ...` child process at a time.

The UI owns the process (unlike training jobs, which outlive it): serving a new set of runs stops the old one, and
the UI stops it when it exits. `trainer serve` does the work (llama.cpp's server, LoRA runs on one base sharing it,
exporting a run's GGUF first when missing, the API key off localhost); this module starts it, stops it, and says
what it serves, read from the server itself (/health, /v1/models) and, while it starts, from its log.

Settings (environment variables; docs/web-ui.md):
  TRAINER_UI_SERVE_PORT          the port to serve on (default: a free one, chosen at each start)
  TRAINER_UI_SERVE_HOST          the address to listen on (default 127.0.0.1: this machine only); any other needs an
                                 API key, read from TRAINER_UI_SERVE_API_KEY_FILE or made once in <workdir>/.ui-serve/api-key
  TRAINER_UI_SERVE_API_KEY_FILE  the file holding that key
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from trainer.serve import is_loopback
from trainer.serve.llamaserver import exit_text, free_port

STOP_TIMEOUT_S = 40.0  # trainer serve lets answers in flight finish for up to 30 s (trainer.serve.server)
EXAMPLE_PROMPT = "Hello! What can you do?"


@dataclass
class Served:
    """The running `trainer serve`: what it was asked to serve and where."""

    process: subprocess.Popen[bytes]
    runs: list[str]  # as the page names them
    names: list[str]  # the model names trainer serve gives them (trainer.serve.runs.run_names)
    host: str
    port: int
    log: Path
    key_file: Path | None
    started: float
    stopped_by_us: bool = False


class ServeManager:
    """One served set of runs at a time (thread-safe: every browser session of the UI shares it)."""

    def __init__(self, workdir: Path):
        self.folder = Path(workdir) / ".ui-serve"
        self.lock = threading.Lock()
        self.served: Served | None = None

    # --- starting and stopping ---
    def start(self, runs: list[str], paths: list[Path], names: list[str]) -> Served:
        """Stop what is served, then start `trainer serve` for these run directories (checked by the caller)."""
        host = os.environ.get("TRAINER_UI_SERVE_HOST", "127.0.0.1").strip() or "127.0.0.1"
        with self.lock:
            self._stop_locked()
            self.folder.mkdir(parents=True, exist_ok=True)
            port = int(os.environ["TRAINER_UI_SERVE_PORT"]) if os.environ.get("TRAINER_UI_SERVE_PORT") else free_port(host)
            key_file = None if is_loopback(host) else self._key_file()
            args = [arg for path in paths for arg in ("--run", str(path))] + ["--host", host, "--port", str(port)]
            if key_file is not None:
                args += ["--api-key-file", str(key_file)]
            log = self.folder / "serve.log"
            with open(log, "w", encoding="utf-8") as handle:  # a file, not a pipe: a pipe nobody reads fills up and blocks it
                handle.write(f"$ trainer serve {' '.join(args)}\n")
                handle.flush()
                # its own session: Ctrl-C in the UI's terminal is the UI's to pass on, and on a stop the whole group
                # (llama-server, a GGUF converter) can be ended if trainer serve itself does not end in time
                process = subprocess.Popen([sys.executable, "-m", "trainer", "serve", *args], cwd=self.folder.parent,
                                           stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
            self.served = Served(process, runs, names, host, port, log, key_file, time.time())
            return self.served

    def stop(self) -> Served | None:
        """Stop the served set (if any); returns what was served."""
        with self.lock:
            return self._stop_locked()

    def _stop_locked(self) -> Served | None:
        served = self.served
        if served is None:
            return None
        served.stopped_by_us = True
        process = served.process
        if process.poll() is None:
            process.terminate()  # trainer serve finishes the answers in flight, then stops its engines
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of its group still there (it did not stop in time, or a converter outlived it)
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        return served

    def _key_file(self) -> Path:
        """The API key clients must send off localhost: the operator's file, or one made here once (only its owner reads it)."""
        given = os.environ.get("TRAINER_UI_SERVE_API_KEY_FILE")
        if given:
            return Path(given).expanduser().resolve()
        path = self.folder / "api-key"
        if not path.is_file():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        return path

    # --- what the page shows ---
    def status(self) -> str:
        """Markdown: what is served and how to use it, or that it is starting, or why it stopped."""
        served = self.served
        if served is None:
            return "Nothing is served. Pick one or more finished runs and press **Serve**."
        code = served.process.poll()
        if code is not None:
            if served.stopped_by_us:
                return f"Stopped serving {', '.join(f'`{n}`' for n in served.names)}."
            return (f"**`trainer serve` stopped** ({exit_text(code)}) serving {', '.join(f'`{r}`' for r in served.runs)}; "
                    f"nothing is served now. The end of its log (`{served.log}`):\n\n```\n{_tail(served.log, 15)}\n```")
        probe = f"http://{_reachable(served.host)}:{served.port}"
        headers = {"Authorization": f"Bearer {_read_key(served.key_file)}"} if served.key_file else {}
        try:
            health = httpx.get(f"{probe}/health", headers=headers, timeout=2)
            if health.status_code == 200:
                models = httpx.get(f"{probe}/v1/models", headers=headers, timeout=2).json()
                return self._ready(served, [m["id"] for m in models.get("data", [])])
            reason = _reason(health)
        except (httpx.HTTPError, ValueError):
            reason = None  # not listening yet: trainer serve exports and starts the engines first
        if reason is not None:
            return (f"**Not answering right now:** {reason} (`trainer serve` restarts a stopped engine). "
                    f"Log: `{served.log}`")
        return self._starting(served)

    def _starting(self, served: Served) -> str:
        text = _tail(served.log, 200)
        if "Starting llama-server" in text or "Serving " in text:
            phase = "starting the engine (llama.cpp's server)"
        elif "converting" in text.lower() or "GGUF" in text:
            phase = "exporting GGUF (once per run; minutes for a large model)"
        else:
            phase = "exporting GGUF / starting engine"
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        return (f"**Starting** `trainer serve` for {', '.join(f'`{r}`' for r in served.runs)}: {phase}... "
                f"({time.time() - served.started:.0f} s)\n\n```\n{last[-300:]}\n```\nLog: `{served.log}`")

    def _ready(self, served: Served, models: list[str]) -> str:
        base = f"http://{_shown(served.host)}:{served.port}/v1"
        first = models[0] if models else (served.names[0] if served.names else "MODEL")
        body = json.dumps({"model": first, "messages": [{"role": "user", "content": EXAMPLE_PROMPT}]})
        if served.key_file:
            auth = f"\n  -H \"Authorization: Bearer $(cat {served.key_file})\" \\"
            key = f"open({str(served.key_file)!r}).read().strip()"
            where = (f"\n\n**API key** (required: the server listens on {served.host}): in `{served.key_file}` on this machine; "
                     "clients send it as `Authorization: Bearer KEY`.")
        else:
            auth, key, where = "", "'none'", " This machine only (127.0.0.1); no API key needed."
        lines = [f"**Serving {len(models)} model{'s' if len(models) != 1 else ''}** at `{base}` (OpenAI-compatible; "
                 f"`trainer serve`, log: `{served.log}`).{where}", "",
                 "| model (the `model` of a request) | run |", "|---|---|"]
        by_name = dict(zip(served.names, served.runs))
        lines += [f"| `{name}` | `{by_name.get(name, '')}` |" for name in models]
        lines += ["", "```bash", f"curl {base}/chat/completions \\{auth}", "  -H 'Content-Type: application/json' \\",
                  f"  -d '{body}'", "```", "", "```python", "from openai import OpenAI", "",
                  f"client = OpenAI(base_url={base!r}, api_key={key})",
                  f"reply = client.chat.completions.create(model={first!r}, messages=[{{'role': 'user', 'content': {EXAMPLE_PROMPT!r}}}])",
                  "print(reply.choices[0].message.content)", "```"]
        if len(models) > 1:
            lines.append(f"\nAsk another run by its name: `model={models[1]!r}`.")
        return "\n".join(lines)


def _reachable(host: str) -> str:
    """The address the UI asks the server at (a wildcard address listens on this machine's loopback too)."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _shown(host: str) -> str:
    """The address clients use: a wildcard address is reached by this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _read_key(path: Path | None) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() if path else ""
    except OSError:
        return ""


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return str(body["error"].get("message"))
        return str(body.get("reason") or body.get("status") or f"HTTP {response.status_code}")
    return f"HTTP {response.status_code}"


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
