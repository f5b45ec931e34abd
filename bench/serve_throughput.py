"""What a user gains by exporting: tokens/s and time to first token of `trainer serve` with each engine, at 1 and 8
concurrent clients, against transformers' `generate` called directly (no server), on a run of the demo model.

    .venv/bin/python bench/serve_throughput.py --run runs/quickstart [--requests 16] [--max-tokens 96]

Each server runs in its own process on 127.0.0.1 and is asked through the official `openai` client, streaming, so
the time to the first content chunk is measured as a client sees it. Prompts are the quickstart's validation recipes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def prompts(count: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (REPO / "data" / "recipes" / "validation.jsonl").read_text().splitlines()]
    return [r["messages"][:-1] for r in rows[:count]]


def direct(run: Path, conversations: list[list[dict]], max_tokens: int) -> dict:
    """transformers' generate in this process, one prompt at a time, streaming (trainer.generate.stream_answer)."""
    from trainer.generate import load_run, stream_answer

    loaded = load_run(run, "cpu")
    firsts, tokens, started = [], 0, time.perf_counter()
    for messages in conversations:
        begin = time.perf_counter()
        text, first = "", None
        for piece in stream_answer(loaded, messages, max_tokens):
            if piece and first is None:
                first = time.perf_counter() - begin
            text += piece
        firsts.append(first or 0.0)
        tokens += len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the end-of-turn token
    seconds = time.perf_counter() - started
    return {"tokens_per_s": tokens / seconds, "ttft_s": statistics.median(firsts), "requests": len(conversations)}


def through_server(run: Path, engine: str, conversations: list[list[dict]], max_tokens: int, clients: int) -> dict:
    from openai import OpenAI
    from test_serve import start_server, stop_server

    process, port = start_server("--run", str(run), "--engine", engine)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    name = client.models.list().data[0].id
    client.chat.completions.create(model=name, messages=conversations[0], max_tokens=4)  # warm-up

    def one(messages):
        begin, first, usage = time.perf_counter(), None, None
        stream = client.chat.completions.create(model=name, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - begin
            if getattr(chunk, "usage", None):
                usage = chunk.usage
        return first or 0.0, usage.completion_tokens if usage else 0

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, conversations))
        seconds = time.perf_counter() - started
    finally:
        stop_server(process)
    return {"tokens_per_s": sum(r[1] for r in results) / seconds, "ttft_s": statistics.median(r[0] for r in results),
            "requests": len(conversations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "quickstart")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--engines", default="transformers,llama.cpp")
    args = parser.parse_args()
    conversations = prompts(args.requests)
    rows = [("transformers generate (no server)", 1, direct(args.run, conversations, args.max_tokens))]
    for engine in args.engines.split(","):
        for clients in (1, 8):
            rows.append((f"trainer serve --engine {engine}", clients,
                         through_server(args.run, engine, conversations, args.max_tokens, clients)))
    print(f"\n{args.requests} requests, max_tokens {args.max_tokens}, greedy, run {args.run}\n")
    print("| system | clients | generated tokens/s (all clients) | median time to first token |")
    print("|---|---|---|---|")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r['tokens_per_s']:.1f} | {r['ttft_s'] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
