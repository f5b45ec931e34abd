"""Data preparation speed: loss masks for many multi-turn conversations, old way against new way.

old: the mask as trainer computed it before (prefix by prefix: for each assistant turn, the conversation up to it
     with the generation prompt and through it, each rendered and tokenized; 2 renders per turn plus the whole);
new: trainer.data.tokenize, one example at a time (one render per conversation, one tokenization with offsets);
batched: the same masks as the data pipeline computes them (Tokenizer.encode_batch: 1,000 conversations per call of
     the Rust tokenizer), in one process (the pipeline adds worker processes on top: bench/data_scale.py).

Each method runs in its own process, so its peak RSS is its own. Conversations: a system prompt and 3 user/assistant
turns of varied length, on SmolLM2's tokenizer and template (the demo model).

    python bench/conversation_masks.py                 # 100,000 conversations, every method
    python bench/conversation_masks.py --count 5000    # a quicker look
    python bench/conversation_masks.py --old-count 10000   # 100,000 for new and batched, the slow old way on 10,000
                                                           # (its rate is per conversation, so it extrapolates linearly)
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's trainer, whatever is installed

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bakers", "fold", "dough", "and", "count", "loaves", "of", "bread", "under", "warm", "lamps", "near", "the", "harbour", "where", "boats", "rest"]


def conversations(count: int, seed: int = 0):
    from trainer.data.formats import Example, Message

    rng = random.Random(seed)

    def say(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    for i in range(count):
        messages = [Message("system", "You are a helpful assistant.", False)]
        for _ in range(3):
            messages += [Message("user", say(rng.randint(5, 30)), False), Message("assistant", say(rng.randint(5, 60)), True)]
        yield Example(tuple(messages), None, "bench", i + 1)


def old_mask(tok, jinja: str, example) -> list[int]:
    """The mask computed prefix by prefix, as trainer did before one-render masks (kept here only to compare)."""
    def render(messages, generation_prompt):
        return tok.apply_chat_template(messages, chat_template=jinja, tokenize=False, add_generation_prompt=generation_prompt)

    def encode(text):
        return list(tok(text, add_special_tokens=False)["input_ids"])

    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    full = encode(render(messages, False))
    labels = [-100] * len(full)
    special = set(tok.all_special_ids)
    for i, message in enumerate(example.messages):
        if message.role != "assistant":
            continue
        start = len(encode(render(messages[:i], True)))
        end = len(encode(render(messages[: i + 1], False)))
        stop = next((p + 1 for p in range(end - 1, start - 1, -1) if full[p] in special), end)
        labels[start:stop] = full[start:stop]
    return labels


def run(method: str, count: int) -> dict:
    from trainer.data.templates import resolve_template
    from trainer.data.tokenize import Tokenizer
    from trainer.demo import demo_model_path
    from trainer.models import load_tokenizer

    tok = load_tokenizer(str(demo_model_path()))
    template = resolve_template("tokenizer", tok)
    encode = Tokenizer(tok, template, "assistant", 4096)
    trained = 0
    started = time.perf_counter()
    if method == "batched":
        stream = conversations(count)
        while chunk := list(itertools.islice(stream, 1000)):
            for result in encode.encode_batch(chunk):
                trained += int((result.labels != -100).sum())
    for example in conversations(count if method != "batched" else 0):
        if method == "old":
            labels = old_mask(tok, template.jinja, example)
        else:
            labels = list(encode(example)[0].labels)
        trained += sum(1 for label in labels if label != -100)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "conversations": count, "seconds": round(seconds, 1), "examples_per_s": round(count / seconds, 1),
            "peak_rss_mib": round(peak_mib), "trained_tokens": trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--old-count", type=int, help="conversations for the old method (default: --count)")
    parser.add_argument("--method", choices=["old", "new", "batched"], help="run one method in this process (used by the parent)")
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run(args.method, args.count)))
        return
    results = []
    for method in ("old", "new", "batched"):
        count = args.old_count if method == "old" and args.old_count else args.count
        done = subprocess.run([sys.executable, __file__, "--method", method, "--count", str(count)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(done.stderr)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    old, new, batched = results
    extrapolated = f" (measured on {old['conversations']}; {args.count / old['examples_per_s'] / 60:.1f} min at {args.count})" if old["conversations"] != args.count else ""
    print(f"{args.count} conversations (system + 3 turns): old {old['examples_per_s']}/s{extrapolated}, peak RSS {old['peak_rss_mib']} MiB; "
          f"new {new['examples_per_s']}/s, peak RSS {new['peak_rss_mib']} MiB ({new['examples_per_s'] / old['examples_per_s']:.1f}x); "
          f"batched {batched['examples_per_s']}/s, peak RSS {batched['peak_rss_mib']} MiB ({batched['examples_per_s'] / old['examples_per_s']:.1f}x); "
          f"trained tokens equal (new, batched): {new['trained_tokens'] == batched['trained_tokens']}"
          + (f", old: {old['trained_tokens'] == new['trained_tokens']}" if old["conversations"] == args.count else ""))


if __name__ == "__main__":
    main()
