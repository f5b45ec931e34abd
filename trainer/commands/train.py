"""`trainer --config FILE`: the training run, the command without a subcommand."""
from __future__ import annotations

import argparse
import sys


def run_training(args: argparse.Namespace) -> int:
    from trainer import engine
    from trainer.config import load_config

    config = load_config(args.run_config, args.overrides)
    result = engine.run(config, args.run_config, resume=args.resume, argv=args.argv, node_rank=args.node_rank)
    if not result.reports:
        return result.exit_code  # the main training process reports; other ranks and the launching process stay quiet
    if result.stopped:
        print(result.message, file=sys.stderr)
        return result.exit_code
    final = result.summary
    if final is not None and final.final_eval_loss is not None:
        print(f"Final validation loss: {final.final_eval_loss:.4f} after {final.steps} steps "
              f"({final.train_seconds / 60:.1f} min, {final.trained_tokens_per_second:.0f} trained tokens/s)")
    print(f"Run directory: {result.run_dir}")
    print(f"Use it: trainer chat --run {result.run_dir}\n"
          f"        trainer export --run {result.run_dir} --to gguf     (or --to ollama: llama.cpp, Ollama, LM Studio)\n"
          f"        trainer serve --run {result.run_dir}                (an OpenAI-compatible API on http://127.0.0.1:8000/v1)")
    return result.exit_code
