"""Tune the quickstart: train with some overrides, then score only the tuned model on the validation set.

Run by hand: .venv/bin/python bench/tune_quickstart.py --set training.learning_rate=1e-3 --set training.epochs=5
Prints wall time, final validation loss, json_list_f1 and the share of answers that parse (targets 0.80 and 95%).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run = Path(work) / "run"
        sets = [x for o in args.overrides + [f"output.dir={run}", "evaluation.after_training=false"] for x in ("--set", o)]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trainer", "--config", "configs/quickstart.yaml", *sets], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        summary = json.loads((run / "summary.json").read_text())

        from trainer.evaluation.metrics import json_list_f1
        from trainer.generate import generate, load_run

        rows = [json.loads(line) for line in (REPO / "data/recipes/validation.jsonl").read_text().splitlines()]
        loaded = load_run(run)
        answers = generate(loaded, [r["messages"][:-1] for r in rows], max_new_tokens=args.max_new_tokens)
        score = json_list_f1([a.text for a in answers], [r["messages"][-1]["content"] for r in rows])
    print(json.dumps({"overrides": args.overrides, "wall_seconds": round(wall), "train_seconds": summary["train_seconds"],
                      "final_eval_loss": summary["final_eval_loss"], **{k: round(v, 3) for k, v in score.items()}}))


if __name__ == "__main__":
    main()
