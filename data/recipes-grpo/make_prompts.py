"""Make the GRPO example's prompts from data/recipes-more/recipes.jsonl (600 recipes the quickstart never saw):

    train.jsonl  lines 1-400 of recipes.jsonl: the training prompts of configs/recipes-grpo.yaml
    test.jsonl   lines 401-600: the fixed test set its evaluation scores; no training prompt comes from these

The split is by position, so it is the same on every machine and needs no seed. Each record is the recipe's
conversation without its answer (OpenAI's reinforcement format ends with the user's turn), with the reference list
kept as "answer" for the json_list_f1 grader.

    python data/recipes-grpo/make_prompts.py
"""
import json
from pathlib import Path

HERE = Path(__file__).parent
TRAIN_ROWS = 400

rows = [json.loads(line) for line in (HERE.parent / "recipes-more" / "recipes.jsonl").read_text(encoding="utf-8").splitlines()]
for name, part in (("train.jsonl", rows[:TRAIN_ROWS]), ("test.jsonl", rows[TRAIN_ROWS:])):
    with open(HERE / name, "w", encoding="utf-8") as out:
        for row in part:
            *prompt, answer = row["messages"]
            assert answer["role"] == "assistant"
            out.write(json.dumps({"messages": prompt, "answer": answer["content"]}, ensure_ascii=False) + "\n")
