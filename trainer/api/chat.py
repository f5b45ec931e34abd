"""The tuned models behind /v1/chat/completions: each job's run loaded on first use, as `trainer serve --engine
transformers` loads one (trainer/serve/engines.py: exactly `trainer generate`'s answers), with its own generation
worker. At most `capacity` stay in memory; the least recently used one is let go for a new one."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from trainer.serve.engines import TransformersEngine, Worker


class LoadedModels:
    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self.loaded: OrderedDict[str, Worker] = OrderedDict()
        self.lock = threading.Lock()  # one load at a time: two requests for a new model load it once

    def get(self, name: str, run_dir: Path) -> Worker:
        """The worker of model `name` (loading the run in the calling thread when it is not in memory)."""
        with self.lock:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                return self.loaded[name]
            engine = TransformersEngine(run_dir)
            engine.model_id = name  # requests name the model by its ft: name, not the run folder's
            worker = Worker(engine)
            self.loaded[name] = worker
            while len(self.loaded) > self.capacity:
                _, old = self.loaded.popitem(last=False)
                old.close(grace=60.0)  # its answer in progress may finish; the weights go with the last reference
            return worker

    def forget(self, name: str) -> None:
        with self.lock:
            worker = self.loaded.pop(name, None)
        if worker is not None:
            worker.close(grace=0.0)

    def close(self) -> None:
        with self.lock:
            workers, self.loaded = list(self.loaded.values()), OrderedDict()
        for worker in workers:
            worker.close(grace=5.0)
