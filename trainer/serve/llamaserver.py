"""llama.cpp's own server as `trainer serve`'s CPU engine: `llama-server` (built by `trainer backends setup
llama.cpp`) as a child process, started with what trainer knows of the runs, watched, and restarted if it dies.

llama-server batches the requests of all its slots continuously, renders the chat template (--jinja, the run's
template file), parses tool calls for the templates it knows, stops on the GGUF's end-of-generation tokens (the run's
end-of-turn tokens, written by the export), and applies LoRA adapters per request. trainer groups the runs it is
asked to serve by the GGUF they need: LoRA runs on one base share one llama-server (`--lora` each, chosen per request
by model name in trainer.serve.router), a merged run (full fine-tune, DoRA ...) or a GGUF file gets one of its own.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from trainer.errors import UserError

Say = Callable[[str], None]
START_TIMEOUT_S = 600.0  # loading a large GGUF from a slow disk


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Model:
    """A name clients ask for, and how its engine answers it."""

    name: str
    lora: int | None = None  # the adapter's id in its llama-server (--lora order); None: the GGUF as it is
    rank: int | None = None  # the adapter's rank (vLLM's --max-lora-rank)


@dataclass
class EngineSpec:
    """One llama-server: a GGUF, the adapters over it, and the models (names) it answers."""

    gguf: Path
    models: list[Model] = field(default_factory=list)
    adapters: list[Path] = field(default_factory=list)  # --lora, in id order
    template: Path | None = None  # --chat-template-file (None: the GGUF's own template)
    context: int = 4096  # per slot: prompt and answer together
    slots: int = 4
    threads: int = 1

    @property
    def names(self) -> str:
        return ", ".join(m.name for m in self.models)

    @property
    def alias(self) -> str:
        """The name llama-server puts in its answers ("model"); the router puts the asked model's name there instead."""
        return self.models[0].name if len(self.models) == 1 else self.gguf.stem

    def command(self, binary: Path, port: int) -> list[str]:
        # --kv-unified: the slots share one KV cache of slots x context cells (a short answer leaves room to a long
        # one), each request at most `context` (--kv-unified-per-slot: never past what trainer sized); --jinja: the chat template through llama.cpp's Jinja engine, which
        # also parses the tool calls of the templates it recognizes (Hermes/Qwen, Llama 3.x, Mistral, ...)
        command = [str(binary), "--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(port),
                   "--ctx-size", str(self.context * self.slots), "--parallel", str(self.slots), "--kv-unified",
                   "--kv-unified-per-slot", str(self.context),
                   "--threads", str(self.threads), "--threads-batch", str(self.threads),
                   "--jinja", "--no-webui", "--alias", self.alias]
        if self.template is not None:
            command += ["--chat-template-file", str(self.template)]
        for adapter in self.adapters:
            command += ["--lora", str(adapter)]
        if self.adapters:  # every adapter at scale 0 unless a request names it (trainer.serve.router adds "lora")
            command.append("--lora-init-without-apply")
        return command


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` now."""
    with socket.socket() as s:
        s.bind((host if host not in ("localhost", "") else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when trainer serve dies, even by SIGKILL, so no llama-server
    is left behind holding its memory. (The signal follows the thread that started the child: engines are started
    by the main thread or by their own supervising thread, both of which live as long as trainer serve.)"""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineProcess:
    """A llama-server child: started and waited for until it answers /health, restarted when it dies unasked.
    `port` is None while it is not answering (starting, restarting, given up)."""

    def __init__(self, spec: EngineSpec, binary: Path, log: Path, say: Say = _say, max_restarts: int = 5):
        self.spec, self.binary, self.log, self.say = spec, binary, log, say
        self.max_restarts = max_restarts
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.problem: str | None = None  # why it does not answer (None while it does)
        self.restarts = 0
        self.stopping = False
        self.watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start it and wait until it answers; UserError (with the end of its log) if it cannot start."""
        self.port = None
        self.problem = "starting"
        port = free_port()
        command = self.spec.command(self.binary, port)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as handle:
            handle.write(f"\n$ {' '.join(command)}\n".encode())
            handle.flush()
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping:
            code = self.process.poll()
            if code is not None:
                self.problem = f"llama-server exited ({exit_text(code)}) while starting"
                raise UserError(f"llama-server for {self.spec.names} could not start ({exit_text(code)}):\n{self.log_tail()}\n"
                                f"(the whole log: {self.log})")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    self.port, self.problem = port, None
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.process.kill()
        if self.stopping:  # trainer serve is stopping: no engine is wanted any more
            return
        raise UserError(f"llama-server for {self.spec.names} did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def supervise(self) -> None:
        """Watch the process on a thread of its own, restarting it when it dies unasked."""
        self.watcher = threading.Thread(target=self._watch, name=f"llama-server-{self.spec.gguf.stem}", daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        while not self.stopping:
            assert self.process is not None
            code = self.process.wait()
            if self.stopping:
                return
            self.port = None
            self.problem = f"llama-server stopped ({exit_text(code)}) and is being restarted"
            if self.restarts >= self.max_restarts:
                self.problem = f"llama-server stopped ({exit_text(code)}) {self.restarts + 1} times; trainer serve gave up restarting it"
                self.say(f"error: {self.problem} (models {self.spec.names}); its log: {self.log}")
                return
            self.restarts += 1
            self.say(f"warning: llama-server for {self.spec.names} stopped ({exit_text(code)}): restarting it "
                     f"(restart {self.restarts} of at most {self.max_restarts}); requests it was answering got a 503.")
            try:
                self.start()
            except UserError as exc:
                self.say(f"error: {exc}")
                continue  # its process has exited: the loop sees it and counts another restart
            self.say(f"llama-server for {self.spec.names} answers again.")

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        self.port = None
        self.problem = "the server is shutting down"
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:].strip()
        except OSError:
            return ""


def exit_text(code: int) -> str:
    """How a child process ended, from its return code (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def server_binary() -> Path:
    """llama-server of the trainer cache's llama.cpp build; UserError naming the set-up command if missing."""
    from trainer.export.llamacpp import find

    built = find()
    if built is None:
        raise UserError("serving with llama.cpp needs its build (llama-server, the converter and the quantizer): "
                        "set it up once with: trainer backends setup llama.cpp (about 8-25 minutes), or serve with --engine transformers")
    return built.server


@dataclass(frozen=True)
class Shape:
    """What sizes a llama-server: from the GGUF's metadata."""

    trained_context: int
    kv_bytes_per_token: int  # K and V in f16, all layers


def gguf_shape(gguf: Path) -> Shape:
    meta = gguf_metadata(gguf, lambda key: key == "general.architecture" or not key.startswith(("tokenizer.", "general.")))
    arch = str(meta.get("general.architecture", "llama"))

    def value(key: str, default: int) -> int:
        found = meta.get(f"{arch}.{key}")
        return found if isinstance(found, int) and found > 0 else default

    layers, width = value("block_count", 32), value("embedding_length", 4096)
    heads = value("attention.head_count", 32)
    kv_heads = value("attention.head_count_kv", heads)
    head_dim = value("attention.key_length", width // heads)
    return Shape(value("context_length", 4096), 2 * layers * kv_heads * head_dim * 2)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(gguf: Path, wanted: Callable[[str], bool]) -> dict[str, object]:
    """The scalar and string values of a GGUF file's header whose keys `wanted` accepts (arrays are skipped).
    Hand-written (the format is a flat list of typed key-values): gguf-py's GGUFReader turns every array, the
    tokenizer's 49k strings among them, into numpy views first, which took 18 s for SmolLM2 on the test machine."""
    import struct

    found: dict[str, object] = {}
    with open(gguf, "rb") as f:

        def read(fmt: str) -> Any:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(read("<Q")).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == 8:
                f.seek(read("<Q"), 1)
            elif kind == 9:
                inner, count = read("<I"), read("<Q")
                if inner in _SCALARS:
                    f.seek(struct.calcsize(_SCALARS[inner]) * count, 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                f.seek(struct.calcsize(_SCALARS[kind]), 1)

        if f.read(4) != b"GGUF":
            raise UserError(f"{gguf} is not a GGUF file")
        read("<I")  # version
        read("<Q")  # tensors
        for _ in range(read("<Q")):
            key, kind = string(), read("<I")
            if wanted(key) and kind in _SCALARS:
                found[key] = read(_SCALARS[kind])
            elif wanted(key) and kind == 8:
                found[key] = string()
            else:
                skip(kind)
    return found


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or 8 GB where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def size_engine(spec: EngineSpec, context: int | None, slots: int | None, threads: int | None) -> None:
    """Context per slot (asked, else 4096, never past what the model was trained on), slots (asked, else 4 per core,
    at least 4 and at most 32, as many as a quarter of the available memory holds in KV cache) and threads (asked,
    else every core: llama.cpp's own default is half of them)."""
    shape = gguf_shape(spec.gguf)
    spec.context = min(context or 4096, shape.trained_context) if shape.trained_context else (context or 4096)
    cores = os.cpu_count() or 1
    if slots is None:
        fits = max(1, available_memory() // 4 // max(1, shape.kv_bytes_per_token * spec.context))
        slots = int(max(1, min(max(4, 4 * cores), 32, fits)))
    spec.slots = slots
    spec.threads = threads or cores
