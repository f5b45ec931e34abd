"""Training throughput and memory: trainer's loop against TRL's SFTTrainer and a bare PyTorch loop.

Run by hand (`make bench-train`, about 15 minutes on 2 CPU cores):

    .venv/bin/python bench/train_throughput.py [--steps 13] [--rounds 2] [--before CHECKOUT]

The same workload for each: SmolLM2-135M-Instruct (the demo GGUF), the recipe
training set, LoRA r=16 alpha=32 on all linear layers, max length 512, an
effective batch of 8 examples, the same number of optimizer steps, the loss on
the assistant answers only. Each system runs in its own process (so peak RSS is
its own), alternating over the rounds. Printed per system: trained tokens/s,
all tokens/s, padding fraction, peak RSS; then the ratios.

  ours  trainer's PEFT backend (`trainer --config`, length-grouped batches, loss on trained positions only)
  trl   TRL SFTTrainer, prompt/completion data (completion-only loss), its defaults otherwise
  bare  a plain forward/backward/step over trainer's own batches: the floor for the loop's overhead
  autotrain  the same YAML with backend: autotrain (AutoTrain Advanced 0.8.36 in its own environment, set up with
        `trainer backends setup autotrain`). AutoTrain trains whole epochs (one here, which is what 13 steps of
        8 examples are) on packed blocks with the loss on every token, so it is compared on all tokens/s;
        its peak RSS is that of its largest process.
  before  with --before CHECKOUT: ours from another checkout of trainer (e.g. `git worktree add /tmp/before <commit>`),
        run in the same rounds, so a change's effect on speed is a ratio measured under the same load
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MAX_LEN, BATCH, ACCUM, LR, R, ALPHA = 512, 4, 2, 2e-4, 16, 32  # BATCH x ACCUM = 8 examples per step for every system
TRAIN = REPO / "data" / "recipes" / "train.jsonl"


def config_text(out: Path, steps: int) -> str:
    from trainer.demo import demo_model_path

    return f"""
model: {{name_or_path: {demo_model_path()}}}
data: {{train: {TRAIN}, validation_split: 0, max_seq_length: {MAX_LEN}}}
training:
  method: lora
  lora: {{r: {R}, alpha: {ALPHA}, dropout: 0.0, target_modules: all-linear}}
  max_steps: {steps}
  batch_size: {BATCH}
  gradient_accumulation: {ACCUM}
  learning_rate: {LR}
  warmup_ratio: 0.0
output: {{dir: {out}}}
logging: {{log_every: 1000}}
"""


def run_ours(steps: int, work: Path, checkout: Path = REPO) -> dict:
    cfg = work / "ours.yaml"
    cfg.write_text(config_text(work / "ours-run", steps))
    subprocess.run([sys.executable, "-m", "trainer", "--config", str(cfg)], cwd=checkout, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(checkout)})
    summary = json.loads((work / "ours-run" / "summary.json").read_text())
    return {"seconds": summary["train_seconds"], "trained_tokens": summary["trained_tokens"]}


def run_autotrain(steps: int, work: Path) -> dict:
    cfg = work / "autotrain.yaml"
    text = config_text(work / "autotrain-run", steps).replace(f"max_steps: {steps}", "epochs: 1")
    cfg.write_text(text + "backend: {name: autotrain, autotrain: {allow_differences: true}}\n")
    subprocess.run([sys.executable, "-m", "trainer", "--config", str(cfg)], cwd=REPO, check=True, capture_output=True)
    summary = json.loads((work / "autotrain-run" / "summary.json").read_text())
    return {"seconds": summary["train_seconds"], "trained_tokens": summary["trained_tokens"], "all_tokens": summary["trained_tokens"]}


def run_bare(steps: int, work: Path) -> dict:
    """Same model, adapter, batches and loss as ours, with nothing around the forward/backward/step."""
    import torch

    from trainer.backends.peft.loop import adapters_take_autocast_inputs
    from trainer.config import parse_config
    from trainer.data.batching import Batching, trained_in
    from trainer.data.pipeline import prepare_data
    from trainer.models import add_adapter, load_model, load_tokenizer, mixed_precision
    from trainer.objectives.sft import LossOnTrainedTokens

    config = parse_config(config_text(work / "bare-run", steps))
    tokenizer = load_tokenizer(config.model.name_or_path)
    data = prepare_data(config, tokenizer)
    model = add_adapter(load_model(config, "cpu"), config)
    module = LossOnTrainedTokens(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    batches, epoch = [], 0
    batching = Batching.of(config, tokenizer.pad_token_id)
    while len(batches) < steps * ACCUM:
        batches += [batching.collate(b) for b in batching.plan(data.train, epoch)]
        epoch += 1
    batches = batches[: steps * ACCUM]
    tokens = sum(trained_in(b) for b in batches)
    bf16 = mixed_precision(config, "cpu") == "bf16"  # the same precision trainer's loop picks on this CPU
    started = time.perf_counter()
    with adapters_take_autocast_inputs(model, bf16):
        _bare_steps(module, optimizer, batches, bf16)
    return {"seconds": time.perf_counter() - started, "trained_tokens": tokens}


def _bare_steps(module, optimizer, batches: list, bf16: bool) -> None:
    import torch

    from trainer.data.batching import trained_in

    for i in range(0, len(batches), ACCUM):
        window = batches[i : i + ACCUM]
        count = sum(trained_in(b) for b in window)
        for b in window:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss_sum, _ = module(**b)
            (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad()


def run_trl(steps: int, work: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trainer.config import parse_config
    from trainer.models import load_model, load_tokenizer

    config = parse_config(config_text(work / "trl-run", steps))
    tokenizer = load_tokenizer(config.model.name_or_path)
    base = load_model(config, "cpu")
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["end"] = time.perf_counter()

    args = SFTConfig(output_dir=str(work / "trl-run"), max_steps=steps, per_device_train_batch_size=BATCH,
                     gradient_accumulation_steps=ACCUM, learning_rate=LR, max_length=MAX_LEN, logging_steps=1000,
                     save_strategy="no", report_to=[], use_cpu=True, warmup_steps=0, seed=42)
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=base, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                         callbacks=[Clock()])
    counted = {"tokens": 0}
    original = trainer.compute_loss

    def counting(model, inputs, *a, **k):
        counted["tokens"] += int((inputs["completion_mask"][:, 1:] != 0).sum()) if "completion_mask" in inputs else int((inputs["labels"][:, 1:] != -100).sum())
        return original(model, inputs, *a, **k)

    trainer.compute_loss = counting
    trainer.train()
    return {"seconds": times["end"] - times["start"], "trained_tokens": counted["tokens"]}


def all_tokens_and_padding(steps: int) -> tuple[int, float]:
    from trainer.config import parse_config
    from trainer.data.batching import length_grouped_batches, padding_fraction
    from trainer.data.pipeline import prepare_data
    from trainer.models import load_tokenizer

    config = parse_config(config_text(Path("/tmp/x"), steps))
    data = prepare_data(config, load_tokenizer(config.model.name_or_path))
    lengths = [len(e.input_ids) for e in data.train]
    batches = length_grouped_batches(lengths, BATCH, 42, 0)
    ratio = sum(e.trained for e in data.train) / sum(lengths)
    return ratio, padding_fraction(batches, lengths)


def child(system: str, steps: int, work: str, before: str | None) -> None:
    if system == "before":
        assert before is not None
        result = run_ours(steps, Path(work), Path(before))
    else:
        result = {"ours": run_ours, "bare": run_bare, "trl": run_trl, "autotrain": run_autotrain}[system](steps, Path(work))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if system in ("ours", "before", "autotrain"):  # the training ran in descendant processes
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    print("RESULT " + json.dumps(result))


def main() -> None:
    global BATCH, ACCUM
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=13, help="optimizer steps (13 = one epoch of the recipe set)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", default="ours,trl,bare")
    parser.add_argument("--micro-batch", type=int, default=BATCH,
                        help="micro-batch of ours and bare (the effective batch stays 8: accumulation = 8 / this); TRL keeps 4x2")
    parser.add_argument("--before", help="another checkout of trainer, run as the system 'before' beside 'ours'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.child != "trl":
        BATCH, ACCUM = args.micro_batch, 8 // args.micro_batch
    if args.child:
        return child(args.child, args.steps, args.work, args.before)
    systems = args.systems.split(",") + (["before"] if args.before else [])
    results: dict[str, list[dict]] = {s: [] for s in systems}
    for round_ in range(args.rounds):
        for system in systems:
            with tempfile.TemporaryDirectory() as work:
                out = subprocess.run([sys.executable, __file__, "--child", system, "--steps", str(args.steps), "--work", work,
                                      "--micro-batch", str(args.micro_batch)] + (["--before", args.before] if args.before else []),
                                     capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{system} failed:\n{out.stderr[-3000:]}")
                result = json.loads(line[7:])
                results[system].append(result)
                print(f"round {round_ + 1} {system}: {result['trained_tokens'] / result['seconds']:.1f} trained tok/s, "
                      f"peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)
    trained_share, padding = all_tokens_and_padding(args.steps)
    print(f"\nworkload: SmolLM2-135M LoRA r={R} all-linear, {args.steps} steps of 8 examples (ours/bare: micro-batches of "
          f"{args.micro_batch}; trl: 4x2), max length {MAX_LEN}")
    print(f"trained tokens are {trained_share:.1%} of all tokens; trainer's length-grouped padding: {padding:.1%}\n")
    speed, all_speed = {}, {}
    print(f"{'system':<10}{'trained tok/s':>15}{'all tok/s':>12}{'peak RSS GB':>13}")
    for system in systems:
        rates = [r["trained_tokens"] / r["seconds"] for r in results[system]]
        speed[system] = statistics.median(rates)
        all_speed[system] = statistics.median(
            [r["all_tokens"] / r["seconds"] if "all_tokens" in r else r["trained_tokens"] / r["seconds"] / trained_share for r in results[system]])
        rss = max(r["peak_rss_gb"] for r in results[system])
        print(f"{system:<10}{speed[system]:>15.1f}{all_speed[system]:>12.1f}{rss:>13.2f}")
    if "trl" in speed and "ours" in speed:
        print(f"\nours / trl: {speed['ours'] / speed['trl']:.2f}x tokens/s (target >= 2.5x)")
    if "bare" in speed and "ours" in speed:
        print(f"loop overhead against the bare loop: {1 - speed['ours'] / speed['bare']:+.1%} (target < 5%)")
    if "before" in speed and "ours" in speed:
        print(f"ours / before ({args.before}): {speed['ours'] / speed['before']:.3f}x trained tokens/s")
    if "autotrain" in speed and "ours" in speed:
        print(f"ours / autotrain: {all_speed['ours'] / all_speed['autotrain']:.2f}x all tokens/s "
              "(AutoTrain trains on every token of packed blocks; trained tok/s is not comparable)")

if __name__ == "__main__":
    main()
