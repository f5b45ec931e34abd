"""Build the recipe preference pairs from the quickstart model's own mistakes (see README.md).

    .venv/bin/python data/recipes-dpo/make_pairs.py --run runs/quickstart

The quickstart model (SmolLM2-135M-Instruct with the LoRA adapter `make demo` trains on data/recipes/train.jsonl)
answers each recipe greedily and `--samples` more times by sampling (temperature `--temperature`, seeded). An answer
whose JSON list differs from the reference (json_list_f1 below 1, or no list at all) is a mistake: it becomes the
rejected answer of a pair whose chosen answer is the reference; at most `--per-recipe` different mistakes per recipe,
and recipes the model always gets right give no pair. Written in OpenAI's preference format.

The recipes are split three ways, so nothing the DPO run is scored on was ever trained on:
- test.jsonl: the first `--held-out` recipes of data/recipes/validation.jsonl as they are (conversations): the
  evaluation's test set, where json_list_f1 is measured before and after DPO;
- validation.jsonl: the pairs from those same held-out recipes (the reward accuracy and margin on unseen pairs);
- train.jsonl: the pairs from the quickstart's training recipes and from the rest of data/recipes/validation.jsonl,
  recipes the quickstart model never trained on, whose mistakes are the kind it makes on new recipes.

With `--source recipes-more --out DIR` the pairs come from data/recipes-more/ instead (600 recipes the quickstart
never saw), split as the GRPO example splits them (data/recipes-grpo/make_prompts.py): of the first `--recipes` lines
(at most the 400 GRPO training prompts) the last tenth give the validation pairs and the rest the training pairs, and
lines 401-600 (the GRPO example's 200 test recipes) are the test set.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))


def answers(loaded, messages: list[list[dict]], samples: int, temperature: float, seed: int, max_new_tokens: int,
            chunk: int = 8) -> list[list[str]]:
    """Per conversation: its greedy answer, then `samples` sampled ones (one generate call for all of a chunk's samples)."""
    import torch

    from trainer.generate import _decode, render_prompt, stop_ids

    tok, eos = loaded.tokenizer, stop_ids(loaded.tokenizer)
    tok.padding_side = "left"
    out: list[list[str]] = []
    for begin in range(0, len(messages), chunk):
        part = messages[begin : begin + chunk]
        encoded = tok([render_prompt(tok, m, loaded.template) for m in part], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(loaded.device)
        width = encoded["input_ids"].shape[1]
        common = {"max_new_tokens": max_new_tokens, "eos_token_id": eos, "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            greedy = loaded.model.generate(**encoded, do_sample=False, **common)
            sampled = None
            if samples:
                torch.manual_seed(seed + begin)
                sampled = loaded.model.generate(**encoded, do_sample=True, temperature=temperature, top_p=1.0,
                                                num_return_sequences=samples, **common)
        for row in range(len(part)):
            rows = [greedy[row]] + ([sampled[row * samples + k] for k in range(samples)] if sampled is not None else [])
            found = []
            for ids in rows:
                new = ids[width:].tolist()
                cut = next((i for i, t in enumerate(new) if t in eos), len(new))
                found.append(_decode(tok, new[:cut])[0])  # the text; the reasoning (gpt-oss only) is not part of a recipe answer
            out.append(found)
        print(f"  {begin + len(part)}/{len(messages)} recipes", file=sys.stderr, flush=True)
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
    parser.add_argument("--source", choices=("recipes", "recipes-more"), default="recipes",
                        help="recipes: data/recipes/ (the shipped pairs); recipes-more: data/recipes-more/, split as the GRPO example")
    parser.add_argument("--recipes", type=int, default=400, help="recipes-more: how many of its 400 training recipes are answered")
    parser.add_argument("--out", default=str(HERE), help="the folder the pairs and the test set are written to")
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per recipe, besides the greedy one")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--per-recipe", type=int, default=2)
    parser.add_argument("--held-out", type=int, default=40, help="the first validation recipes: the test set and the validation pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--dtype", default="float32", help="float32 generates faster than bf16 on CPUs without bf16 matmul units")
    args = parser.parse_args()

    from trainer.generate import load_run

    loaded = load_run(args.run, dtype=args.dtype)
    loaded.model = loaded.model.merge_and_unload()  # the same weights, and no adapter matmuls at every generated token
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.source == "recipes":
        recipes = {split: read(REPO / "data" / "recipes" / f"{split}.jsonl") for split in ("train", "validation")}
        held_out, unseen = recipes["validation"][: args.held_out], recipes["validation"][args.held_out :]
        test, splits = held_out, (("train", recipes["train"] + unseen), ("validation", held_out))
    else:  # the GRPO example's split of recipes-more: 400 training prompts (the last 40 give validation pairs), 200 test
        more = read(REPO / "data" / "recipes-more" / "recipes.jsonl")
        train = more[: args.recipes]
        cut = len(train) - len(train) // 10  # the last tenth of them give the validation pairs
        test, splits = more[400:], (("train", train[:cut]), ("validation", train[cut:]))
    write(out / "test.jsonl", test)
    for name, rows in splits:
        print(f"{name}: answering {len(rows)} recipes, {args.samples + 1} times each ...", file=sys.stderr)
        answered = answers(loaded, [r["messages"][:-1] for r in rows], args.samples, args.temperature, args.seed, args.max_new_tokens)
        pairs = pairs_for(rows, answered, args.per_recipe)
        write(out / f"{name}.jsonl", pairs)
        greedy_wrong = sum(1 for r, a in zip(rows, answered) if a[0] != r["messages"][-1]["content"])
        print(f"{name}: {len(pairs)} pairs from {len({json.dumps(p['input']) for p in pairs})} recipes "
              f"(greedy answer differs from the reference on {greedy_wrong})", file=sys.stderr)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
