"""The models behind /v1/chat/completions: each job's run, or a base model the operator named, loaded on first use as
`trainer generate` loads them (exactly its answers), and several tuned models of one base sharing one copy of it.

A base model is loaded once (keyed by what decides its weights: model settings, dtype, device) and wrapped in one
PeftModel that holds the LoRA adapter of every tuned model of it in memory, each under a name of its own
(PEFT's load_adapter). PEFT's active adapter belongs to the model, not to a request, so the generations on one base
take turns under the base's lock, each switching to its adapter first (set_adapter), or switching them all off
(disable_adapter) for the base model itself. Each model name still has its own generation worker
(trainer/serve/engines.py's Worker): its queue, its cancel and its stop strings.

At most `capacity` bases stay in memory, each with at most `adapters` tuned models; the least recently used one is let
go for a new one: it answers what it was asked before, then its thread ends and its adapter (or, for the last user of
a base, the base's weights) is freed (on a GPU, returned to the device, where the service's training jobs need it). A
run trained with another method than LoRA (its model/ holds full weights) is a base of its own.
"""
from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.api.catalog import BaseModel
from trainer.serve.engines import Cancel, Piece, Sampling, TransformersEngine, Worker


@dataclass
class _Base:
    """One base model in memory and the model names answering with it."""

    model: Any  # the transformers model; a PeftModel around it once an adapter is loaded
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time: the active adapter is global
    users: OrderedDict[str, str | None] = field(default_factory=OrderedDict)  # model name -> its adapter's name (None: the base), LRU first
    adapters: int = 0  # adapter names handed out so far (PEFT's names cannot hold the '.' or ':' of ft: names)

    def add_adapter(self, folder: Path) -> str:
        """Load the LoRA adapter in `folder` next to the others (called under the LoadedModels lock, with this base's
        lock held: no generation runs while the model changes)."""
        from peft import PeftModel

        self.adapters += 1
        name = f"adapter{self.adapters}"
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        self.model.eval()
        return name

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[Any]:
        """The model with `adapter` active (None: every adapter off), for one generation; holds the base's lock."""
        from peft import PeftModel

        with self.lock:
            if not isinstance(self.model, PeftModel):
                assert adapter is None
                yield self.model
            elif adapter is None:
                with self.model.disable_adapter():
                    yield self.model
            else:
                self.model.set_adapter(adapter)
                yield self.model


class SharedEngine:
    """A model name's engine: trainer serve's TransformersEngine (its prompt, counting and streaming) over the shared
    base, with the name's own tokenizer, chat template and adapter."""

    def __init__(self, base: _Base, adapter: str | None, loaded: Any, model_id: str):
        self.base, self.adapter = base, adapter
        self.inner = TransformersEngine(loaded, model_id)
        self.context = self.inner.context

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @model_id.setter
    def model_id(self, value: str) -> None:
        self.inner.model_id = value

    @property
    def loaded(self) -> Any:
        return self.inner.loaded

    def count_tokens(self, prompt: str) -> int:
        return self.inner.count_tokens(prompt)

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return self.inner.prompt(messages, tools)

    def stream(self, prompt: str, sampling: Sampling, cancel: Cancel) -> Iterator[Piece]:
        with self.base.using(self.adapter) as model:
            self.inner.loaded.model = model  # the PeftModel the base became when its first adapter was loaded
            yield from self.inner.stream(prompt, sampling, cancel)


@dataclass(frozen=True)
class ModelSource:
    """What a model name answers with: a finished run (its config.yaml and model/), or a base model's config."""

    config: Any  # trainer's Config
    tokenizer_from: str  # the run's model/ (its tokenizer as trained), or the base model's path
    adapter: Path | None  # the run's LoRA adapter; None for a base model
    full_weights: Path | None = None  # a run trained without an adapter: its own model

    def loading_config(self) -> Any:
        """The config the base is loaded with: as a LoRA run's, unquantised, as `trainer generate` loads it."""
        return self.config.replace(training=self.config.training.replace(method="lora"))

    def key(self, device: str) -> str:
        """What decides the base's weights in memory: two sources with the same key share one base."""
        from trainer.models import torch_dtype

        if self.full_weights is not None:
            return f"full:{self.full_weights.resolve()}"
        return json.dumps({"model": self.config.model.to_dict(), "dtype": str(torch_dtype(self.loading_config(), device)), "device": device},
                          sort_keys=True, default=str)


def run_source(run_dir: Path) -> ModelSource:
    """A job's tuned model: its run's base and adapter, as `trainer generate --run` loads them."""
    from trainer.config import load_config
    from trainer.generate import finished_run

    run_dir = finished_run(run_dir)
    model_dir = run_dir / "model"
    config = load_config(str(run_dir / "config.yaml"), check_files=False)
    if (model_dir / "adapter_config.json").is_file():
        return ModelSource(config, str(model_dir), model_dir)
    full = config.replace(model=config.model.replace(name_or_path=str(model_dir)))
    return ModelSource(full, str(model_dir), None, model_dir)


def base_source(model: BaseModel) -> ModelSource:
    """A base model for chat, as a job on it starts (the operator's config for it: dtype, chat template), no adapter,
    so its answers are those a client's tuned model is measured against."""
    from trainer.api.jobspec import base_config
    from trainer.config.validate import parse_config

    config = parse_config(base_config(model), f"models.{model.name}", check_files=False)
    return ModelSource(config, config.model.name_or_path, None)


class LoadedModels:
    def __init__(self, capacity: int = 2, adapters: int = 16):
        self.capacity, self.adapters = capacity, adapters
        self.bases: OrderedDict[str, _Base] = OrderedDict()  # least recently used first
        self.workers: dict[str, tuple[Worker, str]] = {}  # model name -> its worker and its base's key
        self.base_loads = 0  # base models loaded from disk since the start (what sharing saves)
        self.lock = threading.Lock()  # one load at a time: two requests for a new model load it once

    def get(self, name: str, source_of: Callable[[], ModelSource]) -> Worker:
        """The worker of model `name` (loading what it needs, as `source_of()` says, in the calling thread when it is
        not in memory)."""
        from trainer.generate import Loaded
        from trainer.hardware import Hardware
        from trainer.models import load_tokenizer

        with self.lock:
            if name in self.workers:
                worker, key = self.workers[name]
                self.bases.move_to_end(key)
                self.bases[key].users.move_to_end(name)
                return worker
            source = source_of()
            device = Hardware.detect().device(source.config.backend.peft.device)
            key = source.key(device)
            base = self.bases.get(key)
            if base is None:
                while len(self.bases) >= self.capacity:  # let go first: a GPU may not hold one more
                    self._let_go_base(next(iter(self.bases)))
                base = self.bases[key] = _Base(self._load_base(source, device), device)
                self.base_loads += 1
            self.bases.move_to_end(key)
            if source.adapter is not None and sum(a is not None for a in base.users.values()) >= self.adapters:
                oldest = next(n for n, a in base.users.items() if a is not None)
                self._let_go(oldest)
            m = source.config.model
            tokenizer = load_tokenizer(source.tokenizer_from, m.revision, m.trust_remote_code)
            with base.lock:  # a generation on this base must not run while its model changes
                adapter = base.add_adapter(source.adapter) if source.adapter is not None else None
            engine = SharedEngine(base, adapter, Loaded(source.config, base.model, tokenizer, device), name)
            worker = Worker(engine)  # requests name the model as /v1/models lists it, not by its folder
            base.users[name] = adapter
            self.workers[name] = (worker, key)
            return worker

    @staticmethod
    def _load_base(source: ModelSource, device: str) -> Any:
        from trainer.models import load_model

        return load_model(source.loading_config(), device).eval()

    def _let_go(self, name: str, grace: float | None = None) -> None:
        """Retire a name's worker (it answers what it has; `grace`: close it instead, cancelling after that long); once
        its thread has ended, its adapter is deleted from the base. Called with self.lock held."""
        worker, key = self.workers.pop(name)
        base = self.bases[key]
        adapter = base.users.pop(name)
        _end(worker, grace)
        _free_when_ended(worker.thread, base if adapter is not None else None, adapter)

    def _let_go_base(self, key: str, grace: float | None = None) -> None:
        """Let every name on a base go, and the base with them (freed once their threads have ended)."""
        base = self.bases.pop(key)
        for name in list(base.users):
            worker, _ = self.workers.pop(name)
            base.users.pop(name)
            _end(worker, grace)
            _free_when_ended(worker.thread, None, None)

    def forget(self, name: str) -> None:
        """A deleted model: its requests are stopped, and its adapter freed (its base too, when no other name uses it)."""
        with self.lock:
            if name not in self.workers:
                return
            key = self.workers[name][1]
            if len(self.bases[key].users) == 1:
                self._let_go_base(key, grace=0.0)
            else:
                self._let_go(name, grace=0.0)

    def close(self) -> None:
        with self.lock:
            workers, self.workers, self.bases = [w for w, _ in self.workers.values()], {}, OrderedDict()
        for worker in workers:
            worker.close(grace=5.0)


def _end(worker: Worker, grace: float | None) -> None:
    """A let-go worker: retired (it answers what it was asked), or with `grace` closed (cancelled after that long)."""
    if grace is None:
        worker.retire()
    else:
        worker.close(grace=grace)


def _free_when_ended(thread: threading.Thread, base: _Base | None, adapter: str | None) -> None:
    """Once a let-go worker's thread has ended (its last reference to the engine gone), delete its adapter from a base
    that stays, collect whatever reference cycles may still hold the weights, and hand torch's cached GPU memory back
    to the device: torch keeps freed blocks for itself, where a training child could not use them. Waited for on a
    thread of its own, holding the thread and the base only: holding the worker would keep the weights."""

    def free() -> None:
        import gc

        thread.join()
        if base is not None and adapter is not None:
            with base.lock:
                base.model.delete_adapter(adapter)
        gc.collect()
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    threading.Thread(target=free, name="trainer-api-free-model", daemon=True).start()
