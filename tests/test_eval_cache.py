"""`trainer eval` starts from the data cache: the same cases, few-shot shots and retrieved examples as reading the data
into memory did (the code of that path is kept here as the oracle); a second evaluation opens neither the data files
nor the tokenizer's work again and maps the BM25 index the first one saved; a changed file makes a new entry. And a
Hub data set is streamed by datasets' own call, here on a local folder in the Hub layout."""
import builtins
import json
import os
import random
import time

import pytest
from conftest import make_char_tokenizer

import trainer.data.cache as cache
from trainer.config import parse_config
from trainer.data.pipeline import load_examples, prepare_data, split_validation
from trainer.data.preference import Pair
from trainer.data.templates import CHATML
from trainer.evaluation.cases import eval_cases
from trainer.evaluation.prompts import pick_shots, to_case
from trainer.evaluation.retrieval import Retriever, _same, user_text

TOKENIZER = make_char_tokenizer(CHATML)
DISHES = ["chocolate cake with cocoa", "tomato soup with basil", "lemon tart with butter", "beef stew with carrots",
          "green salad with olive oil", "banana bread with walnuts", "pea soup with mint", "apple pie with cinnamon"]


def conversation(i: int) -> dict:
    dish = DISHES[i % len(DISHES)]
    messages = [{"role": "system", "content": "List the ingredients."}] if i % 3 else []
    messages += [{"role": "user", "content": f"{dish} number {i % 5}"}, {"role": "assistant", "content": f'["{dish.split()[0]}", "{i}"]'}]
    if i % 4 == 0:  # a second turn
        messages += [{"role": "user", "content": f"and {DISHES[(i + 3) % len(DISHES)]}"}, {"role": "assistant", "content": f'["x{i}"]'}]
    return {"messages": messages}


def write_data(path, count: int, start: int = 0) -> str:
    rows = [json.dumps(conversation(i)) for i in range(start, start + count)]
    rows[5] = "{not json"  # a line that is no example: the ones after it keep their numbers
    rows[9] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                                       {"role": "user", "content": "unanswered"}]})  # valid, but no case: it ends with a question
    rows[12] = rows[3]  # a copy: a case must not retrieve it
    path.write_text("".join(r + "\n" for r in rows))
    old = time.time() - 60  # older than cache.RACY_NS: its hash is remembered, as a data file's usually is
    os.utime(path, (old, old))
    return str(path)


def config(train, *overrides):
    text = (f"model: {{name_or_path: x}}\ndata: {{train: {train}, max_seq_length: 128, on_invalid: skip}}\ntraining: {{epochs: 1, seed: 5}}\n"
            "evaluation: {few_shot: 3, retrieval: {k: 2}}\n")
    return parse_config(text, overrides=list(overrides), check_files=False)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path / "cache"))


# ---- the path before the cache, as it was (runner.eval_cases, prompts.pick_shots, retrieval.Retriever) ---------

def old_eval(cfg):
    train, _ = load_examples(cfg.data.train, cfg)
    if cfg.evaluation.test:
        chats = cfg.replace(training=cfg.training.replace(objective="sft"), data=cfg.data.replace(format="auto"))
        examples, _ = load_examples(cfg.evaluation.test, chats)
    elif cfg.data.validation:
        examples, _ = load_examples(cfg.data.validation, cfg)
    else:
        train, examples = split_validation(train, cfg.data.validation_split, cfg.training.seed)
    chat_of = lambda e: e.chosen if isinstance(e, Pair) else e  # noqa: E731
    train, examples = [chat_of(e) for e in train], [chat_of(e) for e in examples]
    cases = [c for c in (to_case(e) for e in examples if e.messages) if c is not None]
    cases = cases[: cfg.evaluation.max_examples] if cfg.evaluation.max_examples else cases
    candidates = [e for e in train if e.messages and len([m for m in e.messages if m.role != "system"]) >= 2]
    shots = random.Random(cfg.training.seed).sample(candidates, min(cfg.evaluation.few_shot, len(candidates)))
    return cases, shots, old_retrieved(candidates, cases, cfg.evaluation.retrieval.k)


def old_retrieved(pool, cases, k):
    import bm25s

    k = max(0, min(k, len(pool) - 1))
    index = bm25s.BM25()
    index.index(bm25s.tokenize([user_text(e.messages) for e in pool], stopwords="en", show_progress=False), show_progress=False)
    asked = bm25s.tokenize([user_text(c.messages) for c in cases], stopwords="en", return_ids=False, show_progress=False)
    found, _ = index.retrieve(asked, k=min(len(pool), k + 8), show_progress=False, n_threads=1)
    ranked = [list(map(int, row)) + sorted(set(range(len(pool))) - set(map(int, row))) for row in found]
    allowed = [[pool[i] for i in order if not _same(case, pool[i])] for case, order in zip(cases, ranked)]
    k = min([k] + [len(f) for f in allowed])
    return [list(reversed(f[:k])) for f in allowed]


def new_eval(cfg):
    cases, pool = eval_cases(cfg, TOKENIZER)
    shots = pick_shots(pool, cfg.evaluation.few_shot, cfg.training.seed)
    retriever = Retriever(pool, cfg.evaluation.retrieval.k, None, pool.index_dir)
    return cases, shots, retriever.shots(cases)


def pairs_file(path):
    rows = [{"prompt": [{"role": "user", "content": f"{DISHES[i % 8]} {i % 3}"}], "chosen": [{"role": "assistant", "content": f"yes {i}"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(40)]
    rows[6]["rejected"] = rows[6]["chosen"]  # identical answers: not a pair
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


SETUPS = {
    "held-out share": lambda tmp: config(write_data(tmp / "train.jsonl", 60)),
    "validation file": lambda tmp: config(write_data(tmp / "train.jsonl", 60), f"data.validation={write_data(tmp / 'val.jsonl', 20, 100)}"),
    "evaluation.test, cut": lambda tmp: config(write_data(tmp / "train.jsonl", 60), f"evaluation.test={write_data(tmp / 'test.jsonl', 20, 3)}",
                                               "evaluation.max_examples=7"),
    "turns each": lambda tmp: config(write_data(tmp / "train.jsonl", 60), "data.turns=each"),
    "dpo pairs": lambda tmp: config(pairs_file(tmp / "pairs.jsonl"), "training.objective=dpo", "data.validation_split=0.2"),
}


@pytest.mark.parametrize("setup", SETUPS)
def test_eval_on_the_cache_gives_the_cases_shots_and_retrieved_examples_of_the_old_path(tmp_path, setup):
    cfg = SETUPS[setup](tmp_path)
    cases, shots, retrieved = old_eval(cfg)
    assert cases and len(shots) == 3 and all(len(r) == 2 for r in retrieved)
    assert new_eval(cfg) == (cases, shots, retrieved)  # first: builds the entry and the index
    assert new_eval(cfg) == (cases, shots, retrieved)  # second: from the cache and the saved index


def test_a_second_eval_opens_no_data_file_and_maps_the_saved_index(tmp_path, monkeypatch):
    import bm25s

    data = write_data(tmp_path / "train.jsonl", 60)
    cfg = config(data)
    first = new_eval(cfg)
    [entry] = [p for p in cache.cache_root().iterdir() if p.is_dir()]
    assert [p.name for p in entry.glob("bm25-*")] == ["bm25-v1-without-held-out"]
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        assert str(file) != data, "the training file was opened again"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr("trainer.data.records.iter_items", lambda ref: pytest.fail(f"{ref} was read again"))
    monkeypatch.setattr("trainer.data.pipeline.build_entry", lambda *a: pytest.fail("prepared again instead of loading the cache"))
    monkeypatch.setattr(bm25s.BM25, "index", lambda *a, **k: pytest.fail("indexed again instead of loading the saved index"))
    loads = []
    real_load = bm25s.BM25.load
    monkeypatch.setattr(bm25s.BM25, "load", lambda *a, **k: loads.append(k.get("mmap")) or real_load(*a, **k))
    assert new_eval(cfg) == first
    assert loads == [True]


def test_a_changed_training_file_makes_a_new_entry_and_index(tmp_path):
    data = tmp_path / "train.jsonl"
    cfg = config(write_data(data, 60))
    before = new_eval(cfg)
    write_data(data, 60, start=1)  # the same name, other conversations
    after = new_eval(cfg)
    assert after == old_eval(cfg) and after[0] != before[0]
    entries = [p for p in cache.cache_root().iterdir() if p.is_dir()]
    assert len(entries) == 2 and all((e / "bm25-v1-without-held-out").is_dir() for e in entries)


def test_prepared_examples_come_from_the_cache_in_row_order(tmp_path, monkeypatch):
    """PreparedData.examples: the example behind each row (a piece of it with turns: each), without reading the file."""
    from trainer.data.prepare import split_turns

    cfg = config(write_data(tmp_path / "train.jsonl", 60), "data.turns=each")
    data = prepare_data(cfg, TOKENIZER)
    examples, _ = load_examples(cfg.data.train, cfg)
    train, _ = split_validation(examples, cfg.data.validation_split, cfg.training.seed)
    monkeypatch.setattr("trainer.data.records.iter_items", lambda ref: pytest.fail(f"{ref} was read again"))
    assert list(data.examples(0)) == [piece for e in train for piece in split_turns(e)]
    assert len(list(data.examples(0))) == len(data.train) and list(data.examples(0, limit=4)) == list(data.examples(0))[:4]


def test_a_hub_data_set_is_streamed_with_row_numbers_and_keyed_by_its_name(tmp_path, monkeypatch):
    """datasets.load_dataset(repo_id, split=..., streaming=True) on a folder in the Hub layout: the same call as for the
    Hub, offline. Its rows are numbered from 1 as "repo:split"; its key holds the name only (the content is not known
    before it is streamed), so a changed data set under the same name is served from the cache."""
    from trainer.data.records import iter_hub_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org/recipes/data").mkdir(parents=True)
    write_data(tmp_path / "org/recipes/data/train-00000-of-00001.jsonl", 30)
    (tmp_path / "org/recipes/data/train-00000-of-00001.jsonl").write_text(  # datasets reads JSON Lines of objects only
        "".join(line + "\n" for line in (tmp_path / "org/recipes/data/train-00000-of-00001.jsonl").read_text().splitlines() if line != "{not json"))
    records = list(iter_hub_dataset("org/recipes:train"))
    assert [r.line for r in records] == list(range(1, 30)) and {r.file for r in records} == {"org/recipes:train"}
    assert records[0].row["messages"] == conversation(0)["messages"]
    cfg = config("org/recipes:train")
    data = prepare_data(cfg, TOKENIZER)
    assert data.splits[0].kept == 29 and cache.data_identity("org/recipes:train") == ([["hub", "org/recipes:train"]], None)
    cases, pool = eval_cases(cfg, TOKENIZER)
    assert [c.line for c in cases] == [e.line for e in split_validation(load_examples("org/recipes:train", cfg)[0], 0.1, 5)[1]]
    monkeypatch.setattr("trainer.data.records.iter_items", lambda ref: pytest.fail(f"{ref} was streamed again"))
    assert eval_cases(cfg, TOKENIZER)[0] == cases
