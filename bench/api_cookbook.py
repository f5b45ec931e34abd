"""OpenAI's cookbook "How to fine-tune chat models", run unchanged against `trainer api` but for base_url and the model name.

Starts `trainer api` on the demo model (SmolLM2-135M-Instruct, answering to the cookbook's "gpt-4o-mini-2024-07-18"),
then makes the cookbook's calls with the official client: files.create for the training and validation files,
fine_tuning.jobs.create with a suffix and no hyperparameters (OpenAI's "auto"), retrieve and list_events until the job
ends, then chat.completions.create with the fine_tuned_model at temperature 0. It prints the job's events, and the
json_list_f1 of the tuned model and of the base model on every record of the validation file (which the job validates
on but never trains on), with the paired bootstrap interval of the difference that `trainer eval` reports.

    .venv/bin/trainer download-demo-model
    .venv/bin/python bench/api_cookbook.py [--train data/recipes/train.jsonl --validation data/recipes/validation.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from openai import OpenAI

from trainer.evaluation.intervals import PerCase, difference, resample_indices
from trainer.evaluation.metrics import json_list_f1

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TRAINER_CACHE", "~/.cache/trainer")).expanduser()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(folder: Path, learning_rate: float) -> tuple[subprocess.Popen, str]:
    models = folder / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"smollm2-135m": {
        "path": str(CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"),
        "aliases": ["gpt-4o-mini-2024-07-18"],
        # the quickstart's settings: what the operator chooses for this model (the client's "auto" picks epochs and batch)
        "config": {"data": {"max_seq_length": 512}, "training": {"learning_rate": learning_rate, "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}},
    }}}))
    port = free_port()
    log = open(folder / "api.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "trainer", "api", "--models", str(models), "--data-dir", str(folder / "data"),
                                "--port", str(port)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"trainer api did not come up; see {folder / 'api.log'}")


def f1_of(client: OpenAI, model: str, records: list[dict]) -> list[float]:
    scores = []
    for record in records:
        prompt, reference = record["messages"][:-1], record["messages"][-1]["content"]
        # the cookbook's call
        response = client.chat.completions.create(model=model, messages=prompt, temperature=0, max_tokens=96)
        scores.append(json_list_f1([response.choices[0].message.content or ""], [reference])["json_list_f1"])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=str(REPO / "data/recipes/train.jsonl"))
    parser.add_argument("--validation", default=str(REPO / "data/recipes/validation.jsonl"))
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="the operator's learning rate for the model (default %(default)s, the quickstart's)")
    parser.add_argument("--hyperparameters", type=json.loads, default=None,
                        help='the job\'s hyperparameters as JSON, e.g. \'{"n_epochs": 5, "batch_size": 8}\' (the quickstart\'s); default: '
                             "none, OpenAI's auto (for 101 examples: 3 epochs of batch 1, 303 steps)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="api-cookbook-"))
    process, base_url = start_api(folder, args.learning_rate)
    try:
        client = OpenAI(base_url=base_url, api_key="none")  # the one change: base_url (and the model name below)
        started = time.time()
        training_file_id = client.files.create(file=open(args.train, "rb"), purpose="fine-tune").id
        validation_file_id = client.files.create(file=open(args.validation, "rb"), purpose="fine-tune").id
        response = client.fine_tuning.jobs.create(training_file=training_file_id, validation_file=validation_file_id,
                                                  model="gpt-4o-mini-2024-07-18", suffix="recipe-ner",
                                                  **({"hyperparameters": args.hyperparameters} if args.hyperparameters else {}))
        job_id = response.id
        print(f"job {job_id}: {response.status}, hyperparameters {response.hyperparameters}")
        while (response := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(10)
        took = time.time() - started
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        print(f"\n{response.status} after {took / 60:.1f} min; trained tokens {response.trained_tokens}; "
              f"hyperparameters {response.hyperparameters}; events (oldest first):")
        for event in reversed(events):
            print(f"  {event.type:8} {event.message}")
        if response.status != "succeeded":
            raise SystemExit(f"the job did not succeed: {response.error}")
        fine_tuned_model_id = response.fine_tuned_model
        records = [json.loads(line) for line in Path(args.validation).read_text().splitlines() if line.strip()]
        started = time.time()
        tuned = f1_of(client, fine_tuned_model_id, records)
        base = f1_of(client, "gpt-4o-mini-2024-07-18", records)
        ones = (1.0,) * len(records)
        gain = difference(PerCase(tuple(tuned), ones), PerCase(tuple(base), ones), resample_indices(len(records), seed=0))
        print(f"\njson_list_f1 on {len(records)} validation records ({(time.time() - started) / 60:.1f} min of chat):")
        print(f"  {fine_tuned_model_id}: {sum(tuned) / len(tuned):.3f}")
        print(f"  gpt-4o-mini-2024-07-18 (the base model): {sum(base) / len(base):.3f}")
        print(f"  tuned minus base: {gain.value:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}] (95% paired bootstrap; better: {gain.better})")
    finally:
        process.terminate()
        process.wait(60)


if __name__ == "__main__":
    main()
