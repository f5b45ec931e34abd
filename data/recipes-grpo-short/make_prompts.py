"""Make the prompts of the second GRPO example (configs/recipes-grpo-short.yaml) from data/recipes-more/recipes.jsonl:
the same 600 recipes, asked for at most 5 ingredients, and no answer kept: nobody wrote the short lists, the grader
(short_list.yaml) only checks them.

    train.jsonl  lines 1-400 of recipes.jsonl (the training prompts of data/recipes-grpo/ too)
    test.jsonl   lines 401-600: the held-out prompts `trainer eval` scores; no training prompt comes from these

Each record is OpenAI's reinforcement format with nothing for the grader but the conversation: {"messages": [system,
user]}, the user's turn the recipe as the quickstart shows it (title and ingredient lines), the system prompt asking
for at most 5 ingredients.

    python data/recipes-grpo-short/make_prompts.py
"""
import json
from pathlib import Path

HERE = Path(__file__).parent
TRAIN_ROWS = 400
SYSTEM = ("You are a helpful recipe assistant. You are to extract the main generic ingredients from each of the recipes "
          "provided: at most 5, as a JSON list.")

rows = [json.loads(line) for line in (HERE.parent / "recipes-more" / "recipes.jsonl").read_text(encoding="utf-8").splitlines()]
for name, part in (("train.jsonl", rows[:TRAIN_ROWS]), ("test.jsonl", rows[TRAIN_ROWS:])):
    with open(HERE / name, "w", encoding="utf-8") as out:
        for row in part:
            system, user, answer = row["messages"]
            assert (system["role"], user["role"], answer["role"]) == ("system", "user", "assistant")
            out.write(json.dumps({"messages": [{"role": "system", "content": SYSTEM}, user]}, ensure_ascii=False) + "\n")
