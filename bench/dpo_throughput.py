"""DPO throughput and memory: trainer's loop against TRL's DPOTrainer, with its defaults and set up for a CPU.

Run by hand (after `data/recipes-dpo/make_pairs.py` wrote the pairs; with --steps 6, 7 minutes on 2 idle CPU cores):

    .venv/bin/python bench/dpo_throughput.py [--steps 10] [--rounds 1]

The same workload for each: SmolLM2-135M-Instruct (the demo GGUF), the recipe preference pairs the steps see, a new LoRA r=16
alpha=32 on all linear layers, max length 512, 8 pairs per optimizer step (4 x 2 accumulated), sigmoid loss,
beta 0.1, the same number of steps. Each system runs in its own process (peak RSS is its own). Printed per
system: trained tokens/s (answer tokens of both sides, the reference pass included in the time), peak RSS.

  ours     trainer's loop: both sides in one forward pass, logits at answer positions only, the reference
           log-probs computed once before the first step (the model with its adapter switched off)
  trl      TRL 1.16 DPOTrainer with its defaults (the reference computed at every step, adapter switched off)
  trl_cpu  TRL set up by hand for this CPU: bf16 autocast and precompute_ref_log_probs=True
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MAX_LEN, BATCH, ACCUM, LR, R, ALPHA, BETA = 512, 4, 2, 5e-5, 16, 32, 0.1
PAIRS = REPO / "data" / "recipes-dpo" / "train.jsonl"


def pairs_seen(work: Path, steps: int) -> Path:
    """The pairs the steps train on (the first steps x batch x accumulation of the recipe pairs), so every system's
    reference pass, once ahead or at every step, covers the same pairs as its training."""
    rows = [line for line in PAIRS.read_text().splitlines() if line.strip()][: steps * BATCH * ACCUM]
    path = work / "pairs.jsonl"
    path.write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    return path


def config_text(out: Path, steps: int) -> str:
    from trainer.demo import demo_model_path

    return f"""
model: {{name_or_path: {demo_model_path()}}}
data: {{train: {pairs_seen(out.parent, steps)}, validation_split: 0, max_seq_length: {MAX_LEN}}}
training:
  objective: dpo
  dpo: {{beta: {BETA}, loss: sigmoid}}
  method: lora
  lora: {{r: {R}, alpha: {ALPHA}, dropout: 0.0, target_modules: all-linear}}
  max_steps: {steps}
  batch_size: {BATCH}
  gradient_accumulation: {ACCUM}
  learning_rate: {LR}
  warmup_ratio: 0.0
output: {{dir: {out}}}
evaluation: {{after_training: false}}
logging: {{log_every: 1000}}
"""


def run_ours(steps: int, work: Path) -> dict:
    cfg = work / "ours.yaml"
    cfg.write_text(config_text(work / "ours-run", steps))
    done = subprocess.run([sys.executable, "-m", "trainer", "--config", str(cfg)], cwd=REPO, check=True, capture_output=True, text=True)
    summary = json.loads((work / "ours-run" / "summary.json").read_text())
    reference = float(re.search(r"Reference log-probabilities of \d+ pairs: ([\d.]+) s", done.stderr).group(1))
    return {"seconds": summary["train_seconds"] + reference, "reference_seconds": reference, "trained_tokens": summary["trained_tokens"]}


def run_trl(steps: int, work: Path, tuned_for_cpu: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trainer.config import parse_config
    from trainer.models import load_model, load_tokenizer

    config = parse_config(config_text(work / "trl-run", steps))
    tokenizer = load_tokenizer(config.model.name_or_path)
    base = load_model(config, "cpu")
    rows = [json.loads(line) for line in pairs_seen(work, steps).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["input"]["messages"], "chosen": r["preferred_output"], "rejected": r["non_preferred_output"]}
                                 for r in rows])
    times: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["end"] = time.perf_counter()

    extra = {"bf16": True, "precompute_ref_log_probs": True} if tuned_for_cpu else {}
    args = DPOConfig(output_dir=str(work / "trl-run"), max_steps=steps, per_device_train_batch_size=BATCH,
                     gradient_accumulation_steps=ACCUM, learning_rate=LR, max_length=MAX_LEN, beta=BETA, logging_steps=1000,
                     save_strategy="no", report_to=[], use_cpu=True, warmup_steps=0, seed=42, **extra)
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    started = time.perf_counter()  # precompute_ref_log_probs runs before on_train_begin: count from the trainer's making
    trainer = DPOTrainer(model=base, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
    counted = {"tokens": 0}
    original = trainer.compute_loss

    def counting(model, inputs, *a, **k):
        counted["tokens"] += int(inputs["completion_mask"][:, 1:].sum())
        return original(model, inputs, *a, **k)

    trainer.compute_loss = counting
    trainer.train()
    return {"seconds": times["end"] - started, "trained_tokens": counted["tokens"]}


def child(system: str, steps: int, work: str) -> None:
    runs = {"ours": run_ours, "trl": lambda s, w: run_trl(s, w, False), "trl_cpu": lambda s, w: run_trl(s, w, True)}
    result = runs[system](steps, Path(work))
    usage = resource.RUSAGE_CHILDREN if system == "ours" else resource.RUSAGE_SELF  # ours trained in a child process
    result["peak_rss_gb"] = resource.getrusage(usage).ru_maxrss / 1e6
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--systems", default="ours,trl,trl_cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.work)
    if not PAIRS.exists():
        sys.exit(f"{PAIRS} is missing: run data/recipes-dpo/make_pairs.py first")
    found: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for system in args.systems.split(","):
            with tempfile.TemporaryDirectory() as work:
                done = subprocess.run([sys.executable, __file__, "--child", system, "--steps", str(args.steps), "--work", work],
                                      capture_output=True, text=True)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{system} failed:\n{done.stderr[-3000:]}")
                found.setdefault(system, []).append(json.loads(line[7:]))
    table = {}
    for system, runs in found.items():
        speed = statistics.median(r["trained_tokens"] / r["seconds"] for r in runs)
        table[system] = {"trained_tokens_per_s": round(speed, 1), "peak_rss_gb": round(max(r["peak_rss_gb"] for r in runs), 2),
                         **({"reference_seconds": runs[0]["reference_seconds"]} if "reference_seconds" in runs[0] else {})}
        print(f"{system:8s} {speed:8.1f} trained tok/s   peak RSS {table[system]['peak_rss_gb']:.2f} GB")
    for other in ("trl", "trl_cpu"):
        if "ours" in table and other in table:
            print(f"ours / {other}: {table['ours']['trained_tokens_per_s'] / table[other]['trained_tokens_per_s']:.2f}x")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
