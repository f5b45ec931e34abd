"""`trainer plan`'s memory (and, with --time, time) estimate against a measured run, for shipped configs shortened.

Run by hand: .venv/bin/python bench/plan_vs_measured.py [--cases quickstart,full,lora-ckpt] [--time]

Each case is a shipped config with overrides that make it run on this machine's CPU with the demo model
(SmolLM2-135M-Instruct GGUF) and the recipe data, for a step or two without validation. For each: `trainer plan
--json` with the same overrides, then the training run in a child process, whose peak resident memory (VmHWM,
ru_maxrss of the children) is the measurement. With --time the run is made twice: the first records this machine's
throughput, from which the plan estimates the second. A private TRAINER_CACHE keeps these throughputs out of yours.

glibc keeps freed blocks below its (rising) mmap threshold in the heap, and resident memory counts them: a step's
activations, freed and allocated again in other sizes, leave the process larger than what it holds (the tiny
checkpointing case of tests/test_plan.py: 1.25 GiB resident against 0.63 GiB held). The plan estimates what the
process holds, so runs are measured with MALLOC_MMAP_THRESHOLD_=65536, which returns large freed blocks to the
system; --glibc-default measures without it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHORT = ["data.validation=null", "data.validation_split=0", "evaluation.after_training=false", "training.epochs=null",
         "training.gradient_accumulation=1", "training.save_every=1000", "output.merge_adapter=false"]
CASES = {
    "quickstart": ("configs/quickstart.yaml", ["training.max_steps=2"]),
    # two steps: the optimizer's state exists from the first update on, so the second step is the steady peak
    "full": ("configs/llama3.2-1b-full-gpu.yaml", ["model.name_or_path={demo}", "data.train=data/recipes/train.jsonl",
                                                   "data.max_seq_length=512", "training.max_steps=2"]),
    "lora-ckpt": ("configs/llama3.2-3b-lora-gpu.yaml", ["model.name_or_path={demo}", "data.train=data/recipes/train.jsonl",
                                                        "data.max_seq_length=512", "training.max_steps=2"]),
}


def overrides(case: str, out: Path, steps: int | None = None) -> list[str]:
    from trainer.demo import demo_model_path

    config, extra = CASES[case]
    sets = SHORT + [e.format(demo=demo_model_path()) for e in extra] + [f"output.dir={out}"]
    if steps:
        sets.append(f"training.max_steps={steps}")
    return ["--config", config] + [arg for s in sets for arg in ("--set", s)]


def measured(args: list[str], env: dict) -> tuple[float, dict]:
    """Peak RSS in bytes of a training run in a fresh child (this helper runs one run per process), and its summary."""
    code = ("import resource, subprocess, sys, json; "
            "p = subprocess.run([sys.executable, '-m', 'trainer', *sys.argv[1:]], capture_output=True, text=True); "
            "print(json.dumps({'rc': p.returncode, 'peak': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, 'err': p.stderr[-2000:]}))")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(result["err"])
    out = Path([a.split("=", 1)[1] for a in args if a.startswith("output.dir=")][0])
    return result["peak"], json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--glibc-default", action="store_true", help="measure without MALLOC_MMAP_THRESHOLD_=65536")
    a = parser.parse_args()
    from trainer.demo import cache_dir

    work = Path(tempfile.mkdtemp(prefix="plan-vs-measured-"))
    cache = work / "cache"
    cache.mkdir()
    for name in ("models", "gguf-models", "gguf-tokenizers"):
        (cache / name).symlink_to(cache_dir() / name)
    env = {**os.environ, "TRAINER_CACHE": str(cache)}
    if not a.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    rows = []
    for case in a.cases.split(","):
        out = work / case
        if a.time:  # a first run measures the throughput the plan then uses
            measured(overrides(case, work / f"{case}-first", 1), env)
        plan_args = overrides(case, out)
        plan = json.loads(subprocess.run([sys.executable, "-m", "trainer", "plan", "--json", *plan_args],
                                         cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout)
        started = time.time()
        peak, summary = measured(plan_args, env)
        estimate = plan["memory"]["peak_bytes"]
        row = {"case": case, "method": plan["method"], "precision": plan["precision"], "shape": plan["shape"],
               "estimated_gib": estimate / 2**30, "measured_gib": peak / 2**30, "error": estimate / peak - 1,
               "parts_gib": {k: v / 2**30 for k, v in plan["memory"]["parts_bytes"].items()},
               "train_seconds": summary["train_seconds"], "wall_seconds": time.time() - started,
               "estimated_seconds": plan["time"].get("measured_here_seconds")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| case | method | micro-batch x tokens | estimated peak | measured peak (RSS) | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s = r["shape"]
        print(f"| {r['case']} | {r['method']} | {s['micro_batch']} x {s['tokens_per_row']} | {r['estimated_gib']:.2f} GiB | "
              f"{r['measured_gib']:.2f} GiB | {r['error']:+.0%} |")


if __name__ == "__main__":
    main()
