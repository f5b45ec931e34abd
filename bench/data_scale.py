"""Data preparation at scale: trainer's first preparation and its load from the data cache, against TRL's SFTTrainer
dataset preparation (datasets.map, and its cache) on the same files.

Conversations are generated from the recipes quickstart data (data/recipes/train.jsonl): its system prompt, and
users' recipes with the generic ingredients as answers, shuffled so no two conversations are alike. Single-turn:
system + 1 recipe; three-turn: system + 3 recipes in a row. Tokenizer: the demo model's (SmolLM2-135M-Instruct's
GGUF), max length 2048, validation share 0.1.

Each measurement runs in its own process, with a fresh $TRAINER_CACHE (or HF_DATASETS_CACHE for TRL), so the
peak RSS is its own: "main" is the process that prepares, "workers" the largest of its worker processes. per_cpu_s
counts conversations per CPU-second (the process and its workers, user and system): on a shared machine it says
what the cores would do if they were free (2 free cores: twice that per second at most).

    python bench/data_scale.py --counts 10000 100000 --turns 1 3           # ours: first preparation and cache load
    python bench/data_scale.py --counts 10000 --turns 3 --systems ours trl  # with TRL's SFTTrainer as the anchor
    python bench/data_scale.py --counts 1000000 --turns 3 --work /tmp/big   # a million (about 1.3 GB of JSONL)

"eval" measures `trainer eval`'s start-up: from a fresh process to its cases (evaluation.max_examples of the held-out
share, --eval-cases), the few-shot shots and every case's retrieved examples (BM25) ready; the models are left out
(they load the same way either way). First with an empty cache (the data is prepared and the index built), then from
the cache; with --before DIR, also a checkout of trainer from before the cache served evaluation (it read the data
into memory every time):

    python bench/data_scale.py --counts 100000 --turns 3 --systems eval --before /path/to/old/checkout
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MAX_LEN = 2048


def generate(path: Path, count: int, turns: int, seed: int = 0) -> Path:
    """`count` recipe-like conversations of `turns` user/assistant turns, written as JSON Lines (once per size)."""
    if path.exists():
        return path
    rows = [json.loads(line) for line in (REPO / "data/recipes/train.jsonl").read_text().splitlines()]
    system = rows[0]["messages"][0]
    pairs = [(r["messages"][1]["content"], json.loads(r["messages"][2]["content"])) for r in rows]
    rng = random.Random(seed)
    temp = path.with_suffix(".tmp")
    with open(temp, "w", encoding="utf-8") as out:
        for i in range(count):
            messages = [system]
            for _ in range(turns):
                prompt, answer = rng.choice(pairs)
                answer = rng.sample(answer, len(answer))  # the same ingredients in another order: another example
                messages += [{"role": "user", "content": f"{prompt.split(chr(10))[0]} (#{i})\n" + prompt.split("\n", 1)[1]},
                             {"role": "assistant", "content": json.dumps(answer)}]
            out.write(json.dumps({"messages": messages}) + "\n")
    temp.rename(path)
    return path


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes), user and system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_gb() -> tuple[float, float]:
    """(this process, the largest of its finished children) peak RSS in GB."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6)


def _config(data: str, workers: int | None, more: str = "") -> Any:
    from trainer.config import parse_config
    from trainer.demo import demo_model_path

    return parse_config(f"model: {{name_or_path: {demo_model_path()}}}\ndata: {{train: {data}, max_seq_length: {MAX_LEN}, "
                        f"num_workers: {workers or 'null'}}}\ntraining: {{epochs: 1}}\n{more}", check_files=False)


def ours(data: str, workers: int | None) -> dict:
    from trainer.data.cache import cache_root
    from trainer.data.pipeline import prepare_data
    from trainer.demo import demo_model_path
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(str(demo_model_path()))
    config = _config(data, workers)
    started, cpu = time.perf_counter(), cpu_seconds()
    prepared = prepare_data(config, tokenizer, progress=sys.stderr.isatty())
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    # touch what training touches first: the plan of epoch 0 (from the lengths column) and one batch
    from trainer.data.batching import Batching

    batching = Batching.of(config, tokenizer.pad_token_id)
    plan = batching.plan(prepared.train, 0)
    batching.collate(plan[0])
    ready = time.perf_counter() - started
    size = sum(f.stat().st_size for f in cache_root().rglob("*") if f.is_file())
    return {"seconds": round(seconds, 2), "ready_seconds": round(ready, 2), "examples": len(prepared.train) + len(prepared.validation),
            "cache_mb": round(size / 1e6, 1), "cpu_s": round(cpu, 1)}


def trl(data: str, num_proc: int | None) -> dict:
    """TRL's SFTTrainer preparing the same conversations (load_dataset + its tokenizing datasets.map), with a tiny
    model of the same vocabulary (the model plays no part in preparing the data; loading SmolLM2 is left out)."""
    import datasets
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from trainer.demo import demo_model_path
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(str(demo_model_path()))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    started, cpu = time.perf_counter(), cpu_seconds()
    dataset = datasets.load_dataset("json", data_files=data, split="train")
    args = SFTConfig(output_dir=os.environ["TRL_OUT"], max_length=MAX_LEN, report_to=[], use_cpu=True, dataset_num_proc=num_proc)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    size = sum(f.stat().st_size for f in Path(os.environ["HF_DATASETS_CACHE"]).rglob("*") if f.is_file())
    return {"seconds": round(seconds, 2), "examples": len(trainer.train_dataset), "cache_mb": round(size / 1e6, 1), "cpu_s": round(cpu, 1)}


def eval_startup(data: str, workers: int | None, cases: int) -> dict:
    """evaluate_run's start: its cases, the few-shot shots, and the retrieved examples of every case."""
    from trainer.data.cache import cache_root
    from trainer.evaluation.prompts import pick_shots
    from trainer.evaluation.retrieval import Retriever
    from trainer.evaluation.runner import eval_cases

    config = _config(data, workers, f"evaluation: {{max_examples: {cases}}}\n")
    started, cpu = time.perf_counter(), cpu_seconds()
    found, pool = eval_cases(config)
    shots = pick_shots(pool, config.evaluation.few_shot, config.training.seed)
    index = getattr(pool, "index_dir", None)  # None: a trainer from before the cache served evaluation
    retriever = Retriever(pool, config.evaluation.retrieval.k, None, *([index] if index else []))
    retrieved = retriever.shots(found)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    sizes = {name: sum(f.stat().st_size for f in cache_root().rglob(pattern) if f.is_file()) / 1e6
             for name, pattern in (("examples_mb", "examples.arrow"), ("index_mb", "bm25-*/*"), ("cache_mb", "*"))}
    assert len(shots) == config.evaluation.few_shot and all(len(r) == retriever.k for r in retrieved)
    return {"seconds": round(seconds, 2), "cases": len(found), "pool": len(pool), "cpu_s": round(cpu, 1),
            **{k: round(v, 1) for k, v in sizes.items()}}


class AnonPeak:
    """The peak of this process's anonymous memory (RssAnon: its heap, not the memory-mapped store or data files, whose
    pages count in RSS but belong to the page cache), sampled every 50 ms by a thread: what grows if data is held."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.05)


def child(system: str, data: str, workers: int | None, cases: int) -> None:
    anon = AnonPeak()
    result = ours(data, workers) if system == "ours" else eval_startup(data, workers, cases) if system == "eval" else trl(data, workers)
    main, children = peak_rss_gb()
    print(json.dumps({**result, "peak_rss_gb": round(main, 2), "peak_anon_gb": round(anon.peak / 1e9, 2),
                      "worker_peak_rss_gb": round(children, 2)}))


def measure(system: str, data: Path, work: Path, workers: int | None, cases: int = 0, repo: Path = REPO) -> dict:
    env = {**os.environ, "TRAINER_CACHE": str(work / "trainer-cache"), "HF_DATASETS_CACHE": str(work / "hf-cache"),
           "TRL_OUT": str(work / "trl-out"), "PYTHONPATH": str(repo)}
    models = Path(os.environ.get("TRAINER_CACHE", "~/.cache/trainer")).expanduser()
    (work / "trainer-cache").mkdir(parents=True, exist_ok=True)
    for name in ("models", "gguf-tokenizers"):  # the demo model and its converted tokenizer, shared
        link = work / "trainer-cache" / name
        if not link.exists():
            link.symlink_to(models / name)
    done = subprocess.run([sys.executable, __file__, "--child", system, "--data", str(data), "--workers", str(workers or 0),
                           "--eval-cases", str(cases)],
                          env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{system} on {data} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_eval(data: Path, work: Path, args: argparse.Namespace, turns: int, count: int) -> dict:
    row: dict = {"system": "eval", "turns": turns, "conversations": count, "cases": args.eval_cases}
    if args.before:
        shutil.rmtree(work, ignore_errors=True)
        before = measure("eval", data, work, args.workers, args.eval_cases, args.before.resolve())
        row.update(before_s=before["seconds"], before_peak_rss_gb=before["peak_rss_gb"])
    shutil.rmtree(work, ignore_errors=True)
    first = measure("eval", data, work, args.workers, args.eval_cases)
    second = measure("eval", data, work, args.workers, args.eval_cases)
    shutil.rmtree(work, ignore_errors=True)
    return {**row, "first_s": first["seconds"], "first_peak_rss_gb": first["peak_rss_gb"], "second_s": second["seconds"],
            "second_peak_rss_gb": second["peak_rss_gb"], "pool": second["pool"], "cache_mb": second["cache_mb"],
            "examples_mb": second["examples_mb"], "index_mb": second["index_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--turns", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--systems", nargs="+", default=["ours"], choices=["ours", "trl", "eval"])
    parser.add_argument("--eval-cases", type=int, default=100, help="eval: evaluation.max_examples")
    parser.add_argument("--before", type=Path, help="eval: also measure this checkout of trainer (e.g. from before a change)")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers for ours, dataset_num_proc for TRL (0: defaults)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/data-scale"))
    parser.add_argument("--child")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.workers or None, args.eval_cases)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    for turns in args.turns:
        for count in args.counts:
            data = generate(args.work / f"conversations-{turns}turn-{count}.jsonl", count, turns)
            for system in args.systems:
                work = args.work / f"{system}-{turns}-{count}"
                if system == "eval":
                    print(json.dumps(measure_eval(data, work, args, turns, count)), flush=True)
                    continue
                shutil.rmtree(work, ignore_errors=True)
                first = measure(system, data, work, args.workers)
                second = measure(system, data, work, args.workers)
                row = {"system": system, "turns": turns, "conversations": count, "data_mb": round(data.stat().st_size / 1e6, 1),
                       "first_s": first["seconds"], "per_s": round(count / first["seconds"]),
                       "per_cpu_s": round(count / first["cpu_s"]) if first.get("cpu_s") else None, "peak_rss_gb": first["peak_rss_gb"],
                       "peak_anon_gb": first["peak_anon_gb"], "worker_peak_rss_gb": first["worker_peak_rss_gb"], "cache_mb": first["cache_mb"],
                       "second_s": second["seconds"], "second_ready_s": second.get("ready_seconds"), "second_peak_rss_gb": second["peak_rss_gb"]}
                print(json.dumps(row), flush=True)
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
