"""Memory of N tuned models of one base behind `trainer api`'s chat: shared (one base, an adapter each:
trainer/api/chat.py) against one copy of the base per model (what the service did before), each in a fresh process.

    python bench/api_shared_bases.py RUN_DIR [RUN_DIR ...]

Prints, for each way, the bytes of the distinct weight tensors in memory (what a GPU would hold), the resident memory
after loading every run (and how much of it is not file-backed: on a CPU transformers may map the weights from the
safetensors file, whose pages all copies share), the seconds the loads took, and whether each run's greedy answer to
one prompt is the same both ways. The runs must be LoRA runs of one base model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Title: Pancakes\n\nIngredients: [\"2 eggs\", \"1 c. milk\"]\n\nGeneric ingredients: "


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory; RssAnon leaves out file-backed pages (weights transformers maps from a safetensors file)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def weights_mb(models: list) -> float:
    """The bytes of every distinct tensor storage of the models: what a GPU would hold for them."""
    seen: dict[int, int] = {}
    for model in models:
        for tensor in list(model.parameters()) + list(model.buffers()):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 2**20


def measure(way: str, runs: list[str]) -> dict:
    import torch

    torch.set_num_threads(1)
    from trainer.api.chat import LoadedModels, run_source
    from trainer.generate import generate, load_run

    before, anon_before, started = rss_mb(), rss_mb("RssAnon"), time.perf_counter()
    answers = []
    if way == "shared":
        models = LoadedModels(capacity=1, adapters=len(runs))
        workers = [models.get(f"ft:{k}", lambda run=run: run_source(Path(run))) for k, run in enumerate(runs)]
        loaded_s = time.perf_counter() - started
        after, anon = rss_mb(), rss_mb("RssAnon")
        weights = weights_mb([next(iter(models.bases.values())).model])
        from trainer.serve.engines import Cancel, Job, Sampling

        for worker in workers:
            got: list = []
            prompt = worker.engine.prompt([{"role": "user", "content": PROMPT}], None)
            worker.submit(Job(prompt, Sampling(max_tokens=24), Cancel(), got.append))
            while not got or got[-1] is not None and not isinstance(got[-1], BaseException):
                time.sleep(0.01)
            answers.append("".join(p.text for p in got[:-1]).strip())
        bases = models.base_loads
        models.close()
        for worker in workers:  # ended before the interpreter is: a generation thread alive at exit aborts it
            worker.thread.join(60)
    else:
        loaded = [load_run(run) for run in runs]
        loaded_s = time.perf_counter() - started
        after, anon = rss_mb(), rss_mb("RssAnon")
        weights = weights_mb([one.model for one in loaded])
        answers = [generate(one, [[{"role": "user", "content": PROMPT}]], max_new_tokens=24)[0].text for one in loaded]
        bases = len(runs)
    return {"way": way, "runs": len(runs), "bases_loaded": bases, "rss_before_mb": round(before), "rss_after_mb": round(after),
            "loaded_mb": round(after - before), "anon_mb": round(anon - anon_before), "weights_mb": round(weights), "load_seconds": round(loaded_s, 1), "answers": answers}


def main(runs: list[str]) -> None:
    results = []
    for way in ("separate", "shared"):  # each in a process of its own: freed memory is not given back to the system
        out = subprocess.run([sys.executable, __file__, "--one", way, *runs], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in results:
        print(f"{r['way']:9} {r['runs']} runs, {r['bases_loaded']} base(s) loaded: weights {r['weights_mb']} MB; +{r['loaded_mb']} MB "
              f"resident ({r['rss_before_mb']} -> {r['rss_after_mb']} MB), of it +{r['anon_mb']} MB not file-backed; loads {r['load_seconds']} s")
    print("same answers both ways:", results[0]["answers"] == results[1]["answers"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3:])))
    else:
        main(sys.argv[1:])
