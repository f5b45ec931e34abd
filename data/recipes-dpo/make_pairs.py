"""Build the recipe preference pairs from the quickstart model's own mistakes (see README.md).

    .venv/bin/python data/recipes-dpo/make_pairs.py --run runs/quickstart

For each recipe of data/recipes/{train,validation}.jsonl the quickstart model answers greedily and `--samples`
more times by sampling (temperature `--temperature`, seeded). An answer whose JSON list differs from the
reference (json_list_f1 below 1, or no list at all) is a mistake: it becomes the rejected answer of a pair whose
chosen answer is the reference. At most `--per-recipe` different mistakes per recipe; recipes the model always
gets right give no pair. Written in OpenAI's preference format.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))


def answers(loaded, messages: list[list[dict]], samples: int, temperature: float, seed: int, max_new_tokens: int) -> list[list[str]]:
    """Per conversation: its greedy answer, then `samples` sampled ones."""
    import torch

    from trainer.generate import _decode, render_prompt, stop_ids

    tok, eos = loaded.tokenizer, stop_ids(loaded.tokenizer)
    tok.padding_side = "left"
    out: list[list[str]] = []
    for begin in range(0, len(messages), 8):
        chunk = messages[begin : begin + 8]
        prompts = [render_prompt(tok, m, loaded.template) for m in chunk]
        encoded = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
        width = encoded["input_ids"].shape[1]
        found: list[list[str]] = [[] for _ in chunk]
        for k in range(samples + 1):
            torch.manual_seed(seed + 1000 * k + begin)
            extra = {"do_sample": True, "temperature": temperature, "top_p": 1.0} if k else {"do_sample": False}
            with torch.no_grad():
                ids = loaded.model.generate(**encoded, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id, **extra)
            for row in range(len(chunk)):
                new = ids[row, width:].tolist()
                cut = next((i for i, t in enumerate(new) if t in eos), len(new))
                found[row].append(_decode(tok, new[:cut]))
        out += found
        print(f"  {begin + len(chunk)}/{len(messages)} recipes", file=sys.stderr, flush=True)
    return out


def pairs_for(rows: list[dict], answered: list[list[str]], per_recipe: int) -> list[dict]:
    from trainer.evaluation.metrics import json_list_f1

    pairs = []
    for row, candidates in zip(rows, answered):
        prompt, reference = row["messages"][:-1], row["messages"][-1]["content"]
        mistakes: list[str] = []
        for answer in candidates:
            if answer.strip() and answer != reference and answer not in mistakes and json_list_f1([answer], [reference])["json_list_f1"] < 1:
                mistakes.append(answer)
        for answer in mistakes[:per_recipe]:
            pairs.append({"input": {"messages": prompt}, "preferred_output": [{"role": "assistant", "content": reference}],
                          "non_preferred_output": [{"role": "assistant", "content": answer}]})
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--per-recipe", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--dtype", default="float32", help="float32 generates faster than bf16 on CPUs without bf16 matmul units")
    parser.add_argument("--validation-recipes", type=int, default=50, help="how many validation recipes give pairs (the first ones)")
    args = parser.parse_args()

    from trainer.generate import load_run

    loaded = load_run(args.run, dtype=args.dtype)
    loaded.model = loaded.model.merge_and_unload()  # the same weights, and no adapter matmuls at every generated token
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (REPO / "data" / "recipes" / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        rows = rows[: args.validation_recipes] if split == "validation" else rows
        print(f"{split}: answering {len(rows)} recipes, {args.samples + 1} times each ...", file=sys.stderr)
        answered = answers(loaded, [r["messages"][:-1] for r in rows], args.samples, args.temperature, args.seed, args.max_new_tokens)
        pairs = pairs_for(rows, answered, args.per_recipe)
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        greedy_wrong = sum(1 for r, a in zip(rows, answered) if a[0] != r["messages"][-1]["content"])
        print(f"{split}: {len(pairs)} pairs from {len({json.dumps(p['input']) for p in pairs})} recipes "
              f"(greedy answer differs from the reference on {greedy_wrong})", file=sys.stderr)


if __name__ == "__main__":
    main()
