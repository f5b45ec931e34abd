"""`trainer plan`'s memory and time estimates against measured runs, for shipped configs shortened.

Run by hand: .venv/bin/python bench/plan_vs_measured.py [--cases quickstart,quickstart-eval,full,lora-ckpt] [--time]

Each case is a shipped config with overrides that make it run on this machine's CPU with the demo model
(SmolLM2-135M-Instruct GGUF) and the recipe data, without validation. For each: `trainer plan --json` with the
same overrides, then the training run in a child process, whose peak resident memory (VmHWM, ru_maxrss of the
children) is the measurement. Memory alone: two optimizer steps.

With --time each case is run twice, for the step counts in TIME_STEPS (about an epoch for the measured run): the
first run records this machine's throughput, from which the plan estimates the second; the second is timed (its
training loop, and the whole command from start to exit). Before its own first run, each case is also planned
from whatever the earlier cases recorded (the quickstart's throughput, where the key matches), which is what a
user who ran the quickstart and then plans another config gets. A private TRAINER_CACHE keeps these throughputs
out of yours. The machine's load (os.getloadavg) is printed before and after each run: shared machines make the
times say more about the neighbours than the hardware.

glibc keeps freed blocks below its (rising) mmap threshold in the heap, and resident memory counts them: a step's
activations, freed and allocated again in other sizes, leave the process larger than what it holds (the tiny
checkpointing case of tests/test_plan.py: 1.25 GiB resident against 0.63 GiB held). By default runs are measured
with MALLOC_MMAP_THRESHOLD_=65536, which returns large freed blocks to the system, and planned in the same
environment, where the plan has no `allocator` part: what the process holds is compared. --glibc-default measures
and plans without it, as users run: the plan then adds the heap's kept blocks (trainer.plan.memory's `allocator`).
--time measures with glibc's default (returning memory to the system on every large free costs time).
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
    # the quickstart as shipped evaluates after training (4 systems on the validation cases): 10 cases here
    "quickstart-eval": ("configs/quickstart.yaml", ["training.max_steps=2", "data.validation=data/recipes/validation.jsonl",
                                                    "evaluation.after_training=true", "evaluation.max_examples=10"]),
    # two steps: the optimizer's state exists from the first update on, so the second step is the steady peak
    "full": ("configs/llama3.2-1b-full-gpu.yaml", ["model.name_or_path={demo}", "data.train=data/recipes/train.jsonl",
                                                   "data.max_seq_length=512", "training.max_steps=2"]),
    "lora-ckpt": ("configs/llama3.2-3b-lora-gpu.yaml", ["model.name_or_path={demo}", "data.train=data/recipes/train.jsonl",
                                                        "data.max_seq_length=512", "training.max_steps=2"]),
}
# --time: (steps of the run that records the throughput, steps of the timed run). Few, because a step of these cases
# took 1 to 4 minutes on the shared machine (load average about 12); more steps measure better where time allows.
TIME_STEPS = {"quickstart": (3, 6), "quickstart-eval": (3, 6), "full": (1, 2), "lora-ckpt": (1, 2)}
TIME_EXTRA = {"full": ["training.batch_size=4"]}  # micro-batch 4 x 512 like lora-ckpt: half the time of a step


def overrides(case: str, out: Path, steps: int | None = None) -> list[str]:
    from trainer.demo import demo_model_path

    config, extra = CASES[case]
    sets = SHORT + [e.format(demo=demo_model_path()) for e in extra] + [f"output.dir={out}"]
    if steps:  # --time
        sets += TIME_EXTRA.get(case, []) + [f"training.max_steps={steps}"]
    return ["--config", config] + [arg for s in sets for arg in ("--set", s)]


def plan_of(args: list[str], env: dict) -> dict:
    return json.loads(subprocess.run([sys.executable, "-m", "trainer", "plan", "--json", *args],
                                     cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout)


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


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
    parser.add_argument("--cases", default="quickstart,full,lora-ckpt")
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
    if not a.glibc_default and not a.time:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    rows = []
    for case in a.cases.split(","):
        out = work / case
        first, steps = TIME_STEPS[case] if a.time else (None, None)
        row: dict = {"case": case, "load_before": load()}
        if a.time:  # planned from what earlier cases recorded, then a first run records this case's own throughput
            before = plan_of(overrides(case, out, steps), env)["time"]
            row.update(estimated_before_own_run_seconds=before.get("measured_here_seconds"), estimated_before_from=before.get("measured_here_from"))
            first_started = time.time()
            _, first_summary = measured(overrides(case, work / f"{case}-first", first), env)
            row.update(first_steps=first, first_train_seconds=first_summary["train_seconds"], first_wall_seconds=time.time() - first_started)
        plan_args = overrides(case, out, steps)
        plan = plan_of(plan_args, env)
        started = time.time()
        peak, summary = measured(plan_args, env)
        estimate = plan["memory"]["peak_bytes"]
        row.update({"method": plan["method"], "precision": plan["precision"], "shape": plan["shape"], "steps": summary["steps"],
                    "estimated_gib": estimate / 2**30, "measured_gib": peak / 2**30, "error": estimate / peak - 1,
                    "parts_gib": {k: v / 2**30 for k, v in plan["memory"]["parts_bytes"].items()},
                    "train_seconds": summary["train_seconds"], "wall_seconds": time.time() - started,
                    "estimated_seconds": plan["time"].get("measured_here_seconds"),
                    "estimated_total_seconds": plan["time"].get("total_here_seconds"), "load_after": load()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| case | method | micro-batch x tokens | estimated peak | measured peak (RSS) | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s = r["shape"]
        print(f"| {r['case']} | {r['method']} | {s['micro_batch']} x {s['tokens_per_row']} | {r['estimated_gib']:.2f} GiB | "
              f"{r['measured_gib']:.2f} GiB | {r['error']:+.0%} |")
    if a.time:
        print("\n| case | steps (first run, timed run) | training: estimated / measured | error | whole command: estimated / "
              "measured | error | training estimated from the earlier cases' runs | error | load average before / after |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            est, took, total, wall = r["estimated_seconds"], r["train_seconds"], r["estimated_total_seconds"], r["wall_seconds"]
            cross = r["estimated_before_own_run_seconds"]
            print(f"| {r['case']} | {r['first_steps']}, {r['steps']} | {_s(est)} / {took:.0f} s | {_error(est, took)} | "
                  f"{_s(total)} / {wall:.0f} s | {_error(total, wall)} | {_s(cross)} | {_error(cross, took)} | "
                  f"{r['load_before']} / {r['load_after']} |")


def _s(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:.0f} s"


def _error(estimate: float | None, measured: float) -> str:
    return "" if estimate is None else f"{estimate / measured - 1:+.0%}"


if __name__ == "__main__":
    main()
