"""Make data/recipes-grpo/prompts.jsonl from data/recipes/validation.jsonl: each recipe's conversation without its
answer (OpenAI's reinforcement format ends with the user's turn), the reference list kept as "answer" for the
json_list_f1 grader of configs/recipes-grpo.yaml. The quickstart trains on data/recipes/train.jsonl, so these are
recipes its adapter has not learnt from.

    python data/recipes-grpo/make_prompts.py
"""
import json
from pathlib import Path

HERE = Path(__file__).parent
rows = [json.loads(line) for line in (HERE.parent / "recipes" / "validation.jsonl").read_text(encoding="utf-8").splitlines()]
with open(HERE / "prompts.jsonl", "w", encoding="utf-8") as out:
    for row in rows:
        *prompt, answer = row["messages"]
        assert answer["role"] == "assistant"
        out.write(json.dumps({"messages": prompt, "answer": answer["content"]}, ensure_ascii=False) + "\n")
