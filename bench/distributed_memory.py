"""What sharding saves: the peak memory of each process, ddp against fsdp and DeepSpeed ZeRO-2/3, on the same run.

Run by hand: .venv/bin/python bench/distributed_memory.py [--processes 2] [--method full] [--strategies ddp,fsdp,zero2,zero3]

`trainer --config` with distributed.strategy ddp, fsdp, then deepspeed at ZeRO stages 2 and 3 (num_processes CPU
processes over gloo):
SmolLM2-135M-Instruct (the demo GGUF) on the recipe training set, a few optimizer steps, fp32 so that
both hold the same numbers. Printed per strategy: the peak RSS of the largest training process, the
seconds per step and the final loss. With `--method full` every weight has a gradient and two AdamW
moments, which fsdp and ZeRO split across the processes (ZeRO-2 keeps whole weights in each process); with
lora only the adapters' share is split and the frozen base weights are sharded too (fsdp, ZeRO-3).
`--precision bf16` runs DeepSpeed's bf16 mode (bf16 weights, float32 master copies) against autocast.

RSS counts what glibc's allocator keeps as well as what the process holds: ZeRO-3 allocates and frees a
gathered copy of every layer at every step, and freed blocks under glibc's (rising) mmap threshold stay in
the heap. MALLOC_MMAP_THRESHOLD_=65536 in the environment returns them (ZeRO-3 LoRA: 3.3 GB -> 2.2 GB);
compare strategies under the same setting.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TRAIN = REPO / "data" / "recipes" / "train.jsonl"


STRATEGIES = {"ddp": "{strategy: ddp", "fsdp": "{strategy: fsdp", "zero2": "{strategy: deepspeed, zero_stage: 2",
              "zero3": "{strategy: deepspeed, zero_stage: 3"}


def config_text(out: Path, strategy: str, processes: int, method: str, steps: int, precision: str) -> str:
    from trainer.demo import demo_model_path

    return f"""
model: {{name_or_path: {demo_model_path()}}}
data: {{train: {TRAIN}, validation_split: 0, max_seq_length: 512}}
training: {{method: {method}, max_steps: {steps}, batch_size: 2, gradient_accumulation: 1, learning_rate: 1.0e-5,
           warmup_ratio: 0.0, precision: {precision}, save_every: {steps}}}
distributed: {STRATEGIES[strategy]}, num_processes: {processes}}}
output: {{dir: {out}}}
logging: {{log_every: 1}}
"""


def child(strategy: str, processes: int, method: str, steps: int, precision: str, work: str) -> None:
    out = Path(work) / "run"
    cfg = Path(work) / "x.yaml"
    cfg.write_text(config_text(out, strategy, processes, method, steps, precision))
    subprocess.run([sys.executable, "-m", "trainer", "--config", str(cfg)], cwd=REPO, check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # the largest of the descendant processes
    print("RESULT " + json.dumps({"peak_rss_gb": peak, "seconds_per_step": summary["train_seconds"] / summary["steps"],
                                  "final_loss": summary["final_train_loss"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--method", default="full", choices=["full", "lora"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--strategies", default="ddp,fsdp,zero2,zero3")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.processes, args.method, args.steps, args.precision, args.work)
    print(f"SmolLM2-135M, method {args.method}, {args.processes} CPU processes, {args.steps} steps, {args.precision}\n")
    print(f"{'strategy':<10}{'peak RSS GB (largest process)':>31}{'s/step':>9}{'final loss':>12}")
    for strategy in args.strategies.split(","):
        with tempfile.TemporaryDirectory() as work:
            out = subprocess.run([sys.executable, __file__, "--child", strategy, "--processes", str(args.processes),
                                  "--method", args.method, "--steps", str(args.steps), "--precision", args.precision,
                                  "--work", work], capture_output=True, text=True)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{strategy} failed:\n{out.stderr[-3000:]}")
            r = json.loads(line[7:])
            print(f"{strategy:<10}{r['peak_rss_gb']:>31.2f}{r['seconds_per_step']:>9.1f}{r['final_loss']:>12.4f}", flush=True)


if __name__ == "__main__":
    main()
