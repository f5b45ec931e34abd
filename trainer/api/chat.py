"""The models behind /v1/chat/completions: each job's run, or a base model the operator named, loaded on first use
as `trainer serve --engine transformers` loads one (trainer/serve/engines.py: exactly `trainer generate`'s answers),
with its own generation worker. At most `capacity` stay in memory; the least recently used one is let go for a new one: it answers what it
was asked before, then its thread ends and its weights are freed (on a GPU, returned to the device, where the
service's training jobs need them)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from trainer.api.catalog import BaseModel
from trainer.serve.engines import TransformersEngine, Worker


class LoadedModels:
    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self.loaded: OrderedDict[str, Worker] = OrderedDict()
        self.lock = threading.Lock()  # one load at a time: two requests for a new model load it once

    def get(self, name: str, load: Callable[[], TransformersEngine]) -> Worker:
        """The worker of model `name` (loading it with `load` in the calling thread when it is not in memory)."""
        with self.lock:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                return self.loaded[name]
            while self.loaded and len(self.loaded) >= self.capacity:  # let go first: a GPU may not hold one more
                _, old = self.loaded.popitem(last=False)
                old.retire()
                _free_when_ended(old.thread)
            engine = load()
            engine.model_id = name  # requests name the model as /v1/models lists it, not by its folder
            worker = Worker(engine)
            self.loaded[name] = worker
            return worker

    def forget(self, name: str) -> None:
        with self.lock:
            worker = self.loaded.pop(name, None)
        if worker is not None:
            worker.close(grace=0.0)
            _free_when_ended(worker.thread)

    def close(self) -> None:
        with self.lock:
            workers, self.loaded = list(self.loaded.values()), OrderedDict()
        for worker in workers:
            worker.close(grace=5.0)


def run_engine(run_dir: Path) -> Callable[[], TransformersEngine]:
    """How a job's tuned model is loaded: its run, base and adapter, as `trainer generate --run` loads it."""
    return lambda: TransformersEngine.of_run(run_dir)


def base_engine(model: BaseModel) -> Callable[[], TransformersEngine]:
    """How a base model is loaded for chat: as a job on it starts (the operator's config for it: dtype, chat template),
    no adapter, so its answers are those a client's tuned model is measured against."""

    def load() -> TransformersEngine:
        from trainer.api.jobspec import base_config
        from trainer.config.validate import parse_config
        from trainer.generate import load_base

        return TransformersEngine(load_base(parse_config(base_config(model), f"models.{model.name}", check_files=False)), model.name)

    return load


def _free_when_ended(thread: threading.Thread) -> None:
    """Once a let-go worker's thread has ended (its last reference to the engine gone), collect whatever reference
    cycles may still hold the weights and hand torch's cached GPU memory back to the device: torch keeps freed blocks
    for itself, where a training child could not use them. Waited for on a thread of its own, holding the thread
    only: holding the worker would keep the weights."""

    def free() -> None:
        import gc

        thread.join()
        gc.collect()
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    threading.Thread(target=free, name="trainer-api-free-model", daemon=True).start()
