"""How long `trainer validate` takes from a cold start, as a user types it (target: under 1 s).

Run by hand: `make bench` or `.venv/bin/python bench/validate_startup.py [--runs N]`.
Prints the median and worst wall time of N runs of the real command in a fresh process.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args = parser.parse_args()
    command = [sys.executable, "-m", "trainer", "validate", "--config", args.config]
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    print(f"trainer validate --config {args.config}: median {statistics.median(times):.3f} s, "
          f"worst {max(times):.3f} s over {args.runs} runs (target < 1 s)")


if __name__ == "__main__":
    main()
