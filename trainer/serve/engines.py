"""The transformers engine, the one of last resort: a run's model as `trainer generate` computes it, one request at
a time on the Worker's thread, behind trainer.serve.app. (llama.cpp is served by its own server: trainer.serve.llamaserver.)

Concurrent requests queue rather than batch: transformers' generate() batches prompts that arrive together (padded to
one length, all finishing when the longest does), not requests that arrive at different times, and its streamer
takes one sequence; its continuous-batching API (generate_batch / init_continuous_batching) is marked experimental
and needs the paged attention kernels. Serving many users is llama.cpp's or vLLM's job.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trainer.generate import Loaded


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy, as `trainer generate` and `trainer eval` answer
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Piece:
    """A stretch of generated text; the last piece of an answer carries the counts and why it ended."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" or "length" on the last piece
    reasoning: str = ""  # reasoning that came with this piece (gpt-oss's analysis channel): reasoning_content
    calls: list | None = None  # on the last piece, the calls the answer made when its format says so (gpt-oss): trainer.tools.ToolCall


@dataclass
class Cancel:
    """Set by the HTTP layer when the client went away (or by a shutdown), read by the engine between tokens."""

    event: threading.Event = field(default_factory=threading.Event)
    shutdown: bool = False  # stopped because the server is stopping, not because the client left

    @property
    def requested(self) -> bool:
        return self.event.is_set()


class ShuttingDown(Exception):
    """A request the server will not answer because it is stopping."""


class Engine(Protocol):
    model_id: str
    context: int | None  # the most tokens prompt and answer may hold together (None: not known)

    def count_tokens(self, prompt: str) -> int: ...

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str: ...

    def stream(self, prompt: str, sampling: Sampling, cancel: Cancel) -> Iterator[Piece]: ...


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    ends = [text.find(s) for s in stop if s and s in text]
    return (text[: min(ends)], True) if ends else (text, False)


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of a stop string (not yet safe to send)."""
    keep = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep


def with_stop_strings(pieces: Iterator[Piece], stop: tuple[str, ...]) -> Iterator[Piece]:
    """Apply the request's `stop` strings to a stream: nothing at or after a stop string is sent."""
    if not stop:
        yield from pieces
        return
    text, sent, last = "", 0, Piece("")
    for piece in pieces:
        last = piece
        text += piece.text
        cut, found = _cut_at_stop(text, stop)
        if found:
            yield replace(piece, text=cut[sent:], finish_reason="stop")
            return
        safe = len(text) - _held_back(text, stop)
        if safe > sent or piece.finish_reason or piece.reasoning:
            upto = len(text) if piece.finish_reason else max(safe, sent)
            yield replace(piece, text=text[sent:upto])
            sent = upto
    if last.finish_reason is None:
        yield Piece(text[sent:], last.prompt_tokens, last.completion_tokens, "stop")


def run_template(run: Path) -> str | None:
    """The chat template a run trained with (None for the text format), as its engine and vLLM render prompts."""
    from trainer.config import load_config
    from trainer.data.templates import resolve_template
    from trainer.models import load_tokenizer

    config = load_config(str(run / "config.yaml"), check_files=False)
    if config.data.format == "text":
        return None
    return resolve_template(config.data.chat_template, load_tokenizer(str(run / "model"))).jinja


class TransformersEngine:
    """A model as `trainer generate` loads it: a run's (base + adapter, or the full weights), or a base model alone."""

    def __init__(self, loaded: Loaded, model_id: str):
        self.loaded = loaded
        self.model_id = model_id
        config: Any = self.loaded.model.config
        # positions past the model's own are garbage (or an error), however long generate() would go on
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        # requests count their prompt's tokens in their own threads while the worker encodes the running one: a fast
        # tokenizer's encode may reconfigure its Rust half (truncation, padding), which two threads must not do at once
        self.tokenizing = threading.Lock()

    @classmethod
    def of_run(cls, run_dir: Path, device: str = "auto") -> TransformersEngine:
        from trainer.export.gguf import run_name
        from trainer.generate import load_run

        return cls(load_run(run_dir, device), run_name(run_dir))  # as the llama.cpp engine and vLLM name it

    def count_tokens(self, prompt: str) -> int:
        with self.tokenizing:
            return len(self.loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        from trainer.generate import render_prompt

        return render_prompt(self.loaded.tokenizer, messages, self.loaded.template_for(tools), tools=tools, variables=self.loaded.variables)

    def stream(self, prompt: str, sampling: Sampling, cancel: Cancel) -> Iterator[Piece]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from trainer.generate import stop_ids

        tok: Any = self.loaded.tokenizer  # a transformers tokenizer and model
        model: Any = self.loaded.model
        from trainer import harmony

        with self.tokenizing:
            encoded = tok(prompt, return_tensors="pt", add_special_tokens=False).to(self.loaded.device)
        width = encoded["input_ids"].shape[1]
        reader = harmony.Reader() if harmony.is_harmony(tok) else None  # gpt-oss: channels read from the special tokens
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=reader is None)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:  # torch tensors in and out
                return torch.full((input_ids.shape[0],), cancel.requested, dtype=torch.bool, device=input_ids.device)

        output: dict[str, Any] = {}
        sample = sampling.temperature > 0
        kwargs = dict(**encoded, streamer=streamer, max_new_tokens=sampling.max_tokens, eos_token_id=stop_ids(tok),
                      pad_token_id=tok.pad_token_id, do_sample=sample, stopping_criteria=StoppingCriteriaList([Cancelled()]))
        if sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        else:  # the model's generation_config may ask for sampling; a greedy request must not inherit it
            kwargs.update(temperature=None, top_p=None, top_k=None)

        def run() -> None:
            try:
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                with torch.no_grad():
                    output["ids"] = model.generate(**kwargs)
            except BaseException as exc:  # handed to the request, which reports it
                output["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        for text in streamer:
            if reader is not None:
                reasoning, text = reader.feed(text)
                if reasoning or text:
                    yield Piece(text, reasoning=reasoning)
            elif text:
                yield Piece(text)
        thread.join()
        if "error" in output:
            raise output["error"]
        new = output["ids"][0, width:].tolist()
        ended = next((k for k, t in enumerate(new) if t in stop_ids(tok)), None)
        count = ended + 1 if ended is not None else len(new)
        finish = "stop" if ended is not None or cancel.requested else "length"
        calls = [c for c in reader.answer.calls if c is not None] if reader is not None else []
        yield Piece("", width, count, finish, calls=calls or None)


@dataclass
class Job:
    """One request's generation. `deliver` is called on the worker's thread with each Piece, then None when the
    answer is complete, or the exception that ended it."""

    prompt: str
    sampling: Sampling
    cancel: Cancel
    deliver: Callable[[Piece | BaseException | None], None]


class Worker:
    """One generation at a time, in arrival order, on a thread of its own: concurrent requests queue instead of
    mixing their tokens, and a request waiting for its turn holds no thread of the HTTP server, so /health and
    /v1/models answer at once however many requests are queued. The engine only ever runs here, and a job's
    pieces are handed over without waiting for the client to read them, so a client that stops reading cannot
    hold the engine: at most its max_tokens, and a token or two once it has gone (its Cancel is set).

    The thread ends after close() or retire(): it references the worker (and so the engine and its weights) for as
    long as it runs, so a worker whose thread waited for jobs forever would keep its model in memory for good."""

    def __init__(self, engine: Engine, stall_after: float = 300.0):
        self.engine = engine
        self.stall_after = stall_after
        self.jobs: queue.Queue[Job | None] = queue.Queue()  # None: the thread ends when it takes it
        self.current: Job | None = None
        self.last_progress = time.monotonic()
        self.closing = False  # no new jobs (close or retire)
        self.draining = False  # jobs not yet started are answered ShuttingDown (close)
        self.grace: threading.Timer | None = None  # cancels the running job at the end of close()'s grace
        self.lock = threading.Lock()  # submit against close: no job slips in behind a shutdown
        self.thread = threading.Thread(target=self._run, name="trainer-serve-generation", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.closing:
                raise ShuttingDown("the server is shutting down")
            self.jobs.put(job)

    def queued(self) -> int:
        return self.jobs.qsize() + (self.current is not None)

    def problem(self) -> str | None:
        """Why the engine is not answering, or None while it is (idle, or making progress on an answer)."""
        if not self.thread.is_alive():
            return "the generation thread has stopped"
        if self.current is not None and time.monotonic() - self.last_progress > self.stall_after:
            return f"the engine has produced nothing for over {self.stall_after:.0f} s"
        return None

    def close(self, grace: float) -> None:
        """Stop taking jobs: the queued ones end with ShuttingDown at once, the running one may finish within
        `grace` seconds, then it is cancelled (and answered as stopped by the shutdown); then the thread ends."""
        with self.lock:
            if self.draining:
                return
            self.closing = self.draining = True
            running = self.current
            while True:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.deliver(ShuttingDown("the server is shutting down"))
            self.jobs.put(None)
            if running is not None:
                def stop() -> None:
                    running.cancel.shutdown = True
                    running.cancel.event.set()

                self.grace = threading.Timer(grace, stop)
                self.grace.daemon = True
                self.grace.start()

    def retire(self) -> None:
        """Stop taking jobs, answer the ones already taken (running and queued), then end the thread: a model let go
        to make room for another (trainer/api/chat.py) still answers whoever asked it before."""
        with self.lock:
            if not self.closing:
                self.closing = True
                self.jobs.put(None)

    def _run(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                self._answer(job)
        finally:
            self.current = None
            if self.grace is not None:  # the running job ended before its grace did
                self.grace.cancel()

    def _answer(self, job: Job) -> None:
        with self.lock:
            if self.draining:  # taken from the queue just as close() emptied it
                job.deliver(ShuttingDown("the server is shutting down"))
                return
            self.current, self.last_progress = job, time.monotonic()
        if job.cancel.requested:  # its client left while it waited
            self.current = None
            job.deliver(None)
            return
        try:
            for piece in with_stop_strings(self.engine.stream(job.prompt, job.sampling, job.cancel), job.sampling.stop):
                self.last_progress = time.monotonic()
                job.deliver(piece)
            job.deliver(None)
        except Exception as exc:  # handed to the request, which reports it; the worker goes on
            job.deliver(exc)
        finally:
            self.current = None
