"""`trainer serve --engine vllm` on a GPU: vLLM with the runs as LoRA modules over their base, measured as
bench/serve_throughput.py measures the CPU engine (total generated tokens/s, median and p95 time to first token, the
official `openai` client, streaming), at several client counts, requests spread over every served run.

    .venv/bin/python bench/vllm_throughput.py --run runs/a --run runs/b [--clients 1,8,32,128] [--max-tokens 64]

Needs an NVIDIA GPU and `pip install vllm`. With one --run and --adapters 4, the run is copied into 4 LoRA runs
(their B matrices scaled, as serve_throughput.py does) to measure multi-LoRA serving.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from serve_throughput import adapter_runs, measure, row, start_trainer_serve, stop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--adapters", type=int, default=0, help="serve this many copies of the one --run as LoRA modules")
    parser.add_argument("--clients", default="1,8,32,128")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    from trainer.export.gguf import run_name

    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        runs = [r.resolve() for r in args.run]
        if args.adapters:
            runs = adapter_runs(runs[0], Path(tmp))[: args.adapters]
        names = [run_name(r) for r in runs]
        router, port = start_trainer_serve([f for r in runs for f in ("--run", str(r))] + ["--engine", "vllm"])
        try:
            lines = ["| system | clients | generated tokens/s (all clients) | median time to first token | p95 time to first token |",
                     "|---|---|---|---|---|"]
            for clients in (int(c) for c in args.clients.split(",")):
                result = measure(f"http://127.0.0.1:{port}/v1", names, clients, max(16, 2 * clients), args.max_tokens)
                lines.append(row(f"vLLM, {len(names)} model(s): {', '.join(names)}", clients, result))
        finally:
            stop(router)
    print(f"\n{args.max_tokens} tokens per answer, greedy; {os.cpu_count()} cores\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
