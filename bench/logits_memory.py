"""What computing logits only at trained positions saves: peak memory and time of one training step.

Run by hand: .venv/bin/python bench/logits_memory.py [--batch 8]
Each variant runs in a fresh process on the same recipe batch (SmolLM2-135M, LoRA r=16 all-linear):
  full     logits for every position, then cross-entropy with ignore_index (what most trainers do)
  trained  trainer's LossOnTrainedTokens: only the positions in the loss reach the LM head
Printed: the growth of peak RSS during the step over the RSS before it, and the step time.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_gb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 1e9


def child(variant: str, batch_size: int) -> None:
    import torch

    from trainer.config import parse_config
    from trainer.data.batching import collate_padded
    from trainer.data.pipeline import prepare_data
    from trainer.demo import demo_model_path
    from trainer.objectives.sft import LossOnTrainedTokens
    from trainer.models import add_adapter, load_model, load_tokenizer

    config = parse_config(f"model: {{name_or_path: {demo_model_path()}}}\ndata: {{train: {REPO}/data/recipes/train.jsonl, "
                          "validation_split: 0, max_seq_length: 512}\ntraining: {epochs: 1, lora: {dropout: 0.0}}\n")
    tokenizer = load_tokenizer(config.model.name_or_path)
    data = prepare_data(config, tokenizer)
    longest = sorted(data.train, key=lambda e: -len(e.input_ids))[:batch_size]
    batch = collate_padded(longest, tokenizer.pad_token_id)
    model = add_adapter(load_model(config, "cpu"), config).train()
    before = rss_gb()
    started = time.perf_counter()
    if variant == "full":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                                                 ignore_index=-100, reduction="sum")
    else:
        loss, _ = LossOnTrainedTokens(model)(**batch)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    trained = int((batch["labels"][:, 1:] != -100).sum())
    print("RESULT " + json.dumps({"growth_gb": peak - before, "seconds": seconds, "positions": batch["input_ids"].numel(),
                                  "trained": trained, "loss": float(loss)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch)
    results = {}
    for variant in ("full", "trained"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--batch", str(args.batch)], capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(out.stderr[-3000:])
        results[variant] = json.loads(line[7:])
    r = results["full"]
    print(f"batch of {args.batch} longest recipes: {r['positions']} positions, {r['trained']} of them trained")
    for variant, r in results.items():
        print(f"{variant:<8} peak RSS growth {r['growth_gb']:.2f} GB, step {r['seconds']:.2f} s, loss sum {r['loss']:.2f}")
    saved = results["full"]["growth_gb"] - results["trained"]["growth_gb"]
    print(f"saved: {saved:.2f} GB ({saved / results['full']['growth_gb']:.0%} of the step's memory)")


if __name__ == "__main__":
    main()
