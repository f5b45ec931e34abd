"""The data cache: a second preparation loads what the first wrote; every input that changes the rows makes a new
entry; a preparation killed half way leaves nothing that looks complete; worker processes give the same rows and
the same problems (with file and line) as the main process; batch plans are the ones trainer made before the cache."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, make_char_tokenizer

import trainer.data.cache as cache
import trainer.data.prepare as prepare
from trainer.config import parse_config
from trainer.data.batching import length_grouped_batches, pack_examples
from trainer.data.pipeline import prepare_data
from trainer.data.templates import CHATML, resolve_template, template_of
from trainer.data.tokenize import Tokenizer
from trainer.data.batching import Batching

TOKENIZER = make_char_tokenizer(CHATML)
WORDS = ["red", "blue", "green", "pink", "gold", "grey", "teal", "navy", "ruby", "jade", "lime", "rose"]


def conversation(i: int, turns: int = 1) -> dict:
    messages = [{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []
    for t in range(turns):
        word = WORDS[(i + t) % len(WORDS)]
        messages += [{"role": "user", "content": f"say {word} {i}"}, {"role": "assistant", "content": word * (1 + (i * 7 + t) % 5)}]
    return {"messages": messages}


def write_data(path, count: int, turns: int = 1, broken: dict | None = None):
    lines = [json.dumps(conversation(i, turns)) for i in range(count)]
    for line, text in (broken or {}).items():
        lines[line - 1] = text
    path.write_text("".join(line + "\n" for line in lines))
    return path


def config(path, *overrides):
    text = f"model: {{name_or_path: x}}\ndata: {{train: {path}, max_seq_length: 96}}\ntraining: {{epochs: 1, seed: 3}}\n"
    return parse_config(text, overrides=list(overrides), check_files=False)


def entries():
    root = cache.cache_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path / "cache"))


def test_second_preparation_loads_the_cache(tmp_path, monkeypatch):
    data = write_data(tmp_path / "d.jsonl", 50)
    first = prepare_data(config(data), TOKENIZER)
    assert len(entries()) == 1
    monkeypatch.setattr("trainer.data.pipeline.build_entry", lambda *a: pytest.fail("prepared again instead of loading the cache"))
    second = prepare_data(config(data), TOKENIZER)
    assert [tuple(e.input_ids) for e in second.train] == [tuple(e.input_ids) for e in first.train]
    assert [tuple(e.labels) for e in second.validation] == [tuple(e.labels) for e in first.validation]
    assert second.splits[0].detection == first.splits[0].detection == "detected messages format: messages in 50 of 50 rows"
    # settings that change no row share the entry
    for setting in ("data.num_workers=1", "data.packing=true", "data.on_invalid=skip"):
        prepare_data(config(data, setting), TOKENIZER)
    assert len(entries()) == 1


CHANGES = [
    ("data.validation_split=0.2",), ("data.format=messages",), ("data.columns.system=sys",), ("data.chat_template=zephyr",),
    ("data.turns=each",), ("data.system_prompt=fold",), ("data.max_seq_length=64",), ("data.train_on=all",), ("training.seed=4",),
]


@pytest.mark.parametrize("change", CHANGES, ids=[c[0].split("=")[0] for c in CHANGES])
def test_each_setting_that_changes_the_rows_makes_a_new_entry(tmp_path, change):
    data = write_data(tmp_path / "d.jsonl", 30, turns=2)
    prepare_data(config(data), TOKENIZER)
    prepare_data(config(data, *change), TOKENIZER)
    assert len(entries()) == 2


def test_data_tokenizer_template_and_version_each_make_a_new_entry(tmp_path, monkeypatch):
    data = write_data(tmp_path / "d.jsonl", 30)
    prepare_data(config(data), TOKENIZER)
    with open(data, "a") as handle:  # the same name, one more line: new content
        handle.write(json.dumps(conversation(99)) + "\n")
    assert len(prepare_data(config(data), TOKENIZER).splits[0].problems) == 0 and len(entries()) == 2
    other = make_char_tokenizer(CHATML)
    other.add_tokens(["<extra>"])
    prepare_data(config(data), other)
    assert len(entries()) == 3
    templated = make_char_tokenizer(CHATML.replace("<|im_start|>", "<|im_start|> "))  # data.chat_template: tokenizer
    prepare_data(config(data), templated)
    prepare_data(config(data), make_char_tokenizer(CHATML.replace("<|im_start|>", "<|im_start|>  ")))
    assert len(entries()) == 5
    monkeypatch.setattr(cache, "__version__", "9.9.9")
    prepare_data(config(data), TOKENIZER)
    assert len(entries()) == 6


RECORDED: dict = {}
_REAL_PREPARE = prepare.prepare_chunk


def recording(items):
    """prepare_chunk, noting which process ran it (forked workers inherit the patched module and RECORDED)."""
    (RECORDED["dir"] / f"pid-{os.getpid()}-{time.monotonic_ns()}").write_text(str(os.getpid()))
    return _REAL_PREPARE(items)


def _pids_of(tmp_path):
    return {int(p.read_text()) for p in tmp_path.glob("pid-*")}


def test_worker_processes_give_the_main_process_rows_and_problems_with_file_and_line(tmp_path, monkeypatch):
    broken = {1500: '{"messages": [{"role": "user", "content": "x"}', 2001: '{"messages": [{"role": "robot", "content": "x"}]}',
              2400: json.dumps({"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]})}
    data = write_data(tmp_path / "d.jsonl", 2500, broken=broken)
    monkeypatch.setattr(prepare, "prepare_chunk", recording)
    monkeypatch.setitem(RECORDED, "dir", tmp_path)
    pooled = prepare_data(config(data, "data.num_workers=2", "data.on_invalid=skip"), TOKENIZER)
    workers = _pids_of(tmp_path) - {os.getpid()}
    assert len(workers) >= 1, "the chunks were not tokenized in worker processes"
    problems = [(p.file, p.line) for p in pooled.splits[0].problems]
    assert problems == [(str(data), 1500), (str(data), 2001), (str(data), 2400)]
    assert "the conversation begins with an assistant message" in pooled.splits[0].problems[2].message
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path / "other-cache"))
    for p in tmp_path.glob("pid-*"):
        p.unlink()
    single = prepare_data(config(data, "data.num_workers=1", "data.on_invalid=skip"), TOKENIZER)
    assert _pids_of(tmp_path) == {os.getpid()}
    assert single.splits[0].problems == pooled.splits[0].problems
    assert (single.splits[0].records, single.splits[0].kept) == (pooled.splits[0].records, pooled.splits[0].kept) == (2500, 2497)
    for a, b in ((single.train, pooled.train), (single.validation, pooled.validation)):
        assert [(e.line, tuple(e.input_ids), tuple(e.labels)) for e in a] == [(e.line, tuple(e.input_ids), tuple(e.labels)) for e in b]


KILLED = """
import sys, time
import trainer.data.prepare as prepare
from trainer.config import parse_config
from trainer.data.pipeline import prepare_data
sys.path.insert(0, {tests!r})
from conftest import make_char_tokenizer
from trainer.data.templates import CHATML
real = prepare.prepare_chunk
def slow(items):  # slow enough to be killed half way
    time.sleep(0.2)
    return real(items)
prepare.prepare_chunk = slow
config = parse_config("model: {{name_or_path: x}}\\ndata: {{train: {data}, num_workers: 2}}\\ntraining: {{epochs: 1}}\\n", check_files=False)
prepare_data(config, make_char_tokenizer(CHATML))
print("finished")
"""


@pytest.mark.integration
def test_a_killed_preparation_leaves_no_complete_entry_and_the_next_one_rebuilds(tmp_path):
    data = write_data(tmp_path / "d.jsonl", 20_000)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILLED.format(tests=str(REPO / "tests"), data=data)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    root = cache.cache_root()
    deadline = time.monotonic() + 120
    while not (root.is_dir() and any((p / "rows.arrow").exists() for p in root.glob(".tmp-*"))):
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read().decode()[-2000:] if child.stderr else ""
        time.sleep(0.05)
    time.sleep(0.5)  # some chunks written, most not
    os.kill(child.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
    child.wait()
    assert b"finished" not in child.stdout.read(), "the preparation ended before it was killed"
    try:
        assert not any(cache.is_complete(p) for p in root.iterdir()), "a killed preparation left an entry that looks complete"
        listed = subprocess.run([sys.executable, "-m", "trainer", "cache", "list"], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert "incomplete" in listed.stdout and listed.returncode == 0
        deadline = time.monotonic() + 10  # the workers notice their main process is gone
        while _children_of_session(child.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _children_of_session(child.pid), "worker processes outlived the killed preparation"
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    data_after = prepare_data(config(data, "data.validation_split=0.1"), TOKENIZER)  # the abandoned folder (its process is gone) is removed
    assert not list(root.glob(".tmp-*"))
    rebuilt = subprocess.run([sys.executable, "-m", "trainer", "cache", "list"], env=env, capture_output=True, text=True)
    assert rebuilt.returncode == 0 and len(data_after.train) > 0


def _children_of_session(sid: int) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.info["pid"]) == sid:
                found.append(process.info["pid"])
        except (ProcessLookupError, PermissionError):
            continue
    return found


def test_the_next_run_after_a_kill_builds_the_same_entry(tmp_path):
    """A folder left by a killed preparation of the same inputs is never read: the next run prepares again."""
    data = write_data(tmp_path / "d.jsonl", 40)
    key, _ = cache.cache_key(config(data).data, config(data).training.seed, TOKENIZER, template_of(config(data).data, TOKENIZER).key, "x")
    stale = cache.cache_root() / f".tmp-{key}-999999999"
    stale.mkdir(parents=True)
    (stale / "rows.arrow").write_bytes(b"half written")
    prepared = prepare_data(config(data), TOKENIZER)
    assert len(prepared.train) + len(prepared.validation) == 40
    assert not stale.exists() and entries() == [key]


def _plan_before_the_cache(batching, examples, epoch):
    """Batching.plan as it was before the data cache (lists of examples), verbatim."""
    lengths = [len(e.input_ids) for e in examples]
    if batching.packing:
        rows = [[examples[i] for i in row] for row in pack_examples(lengths, batching.max_seq_length, batching.seed, epoch)]
        return [rows[i : i + batching.batch_size] for i in range(0, len(rows), batching.batch_size)]
    return [[examples[i] for i in batch] for batch in length_grouped_batches(lengths, batching.batch_size, batching.seed, epoch)]


@pytest.mark.parametrize("packing", [False, True])
def test_batch_plans_are_the_plans_made_before_the_cache(tmp_path, packing):
    data = write_data(tmp_path / "d.jsonl", 400, turns=2)
    cfg = config(data, f"data.packing={str(packing).lower()}", "training.batch_size=4")
    prepared = prepare_data(cfg, TOKENIZER)
    # the examples as the per-example path tokenizes them, in the order the list-based pipeline kept them
    encode = Tokenizer(TOKENIZER, resolve_template("tokenizer", TOKENIZER), "assistant", 96)
    from trainer.data.pipeline import load_examples, split_validation

    examples, _ = load_examples(str(data), cfg)
    train, _ = split_validation(examples, cfg.data.validation_split, cfg.training.seed)
    before = [encode(e)[0] for e in train]
    assert [tuple(e.input_ids) for e in prepared.train] == [tuple(e.input_ids) for e in before]
    batching = Batching.of(cfg, 0)
    for epoch in (0, 1, 2):
        old = _plan_before_the_cache(batching, before, epoch)
        new = batching.plan(prepared.train, epoch)
        as_ids = (lambda b: [[tuple(e.input_ids) for e in row] for row in b]) if packing else (lambda b: [tuple(e.input_ids) for e in b])
        if packing:
            new_examples = [[[prepared.train[i] for i in row] for row in batch] for batch in new]
        else:
            new_examples = [[prepared.train[i] for i in batch] for batch in new]
        assert [as_ids(b) for b in new_examples] == [as_ids(b) for b in old]
        first = batching.collate(new[0])
        assert first["input_ids"].shape[0] == len(new[0])


def test_cache_clear_frees_the_entries(tmp_path, cli):
    data = write_data(tmp_path / "d.jsonl", 20)
    prepare_data(config(data), TOKENIZER)
    listed = cli("cache", "list")
    assert listed.returncode == 0 and entries()[0] in listed.stdout and "20 rows" in listed.stdout
    cleared = cli("cache", "clear")
    assert cleared.returncode == 0 and "removed 1 entr" in cleared.stdout and entries() == []


def test_shards_and_parquet_are_read_as_a_stream_with_file_and_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    write_data(folder / "a.jsonl", 1200, broken={700: "{not json"})
    rows = [conversation(i) for i in range(5000)]
    rows[4500] = {"messages": [{"role": "robot", "content": "x"}]}
    pq.write_table(pa.Table.from_pylist(rows), folder / "b.parquet", row_group_size=1000)
    prepared = prepare_data(config(folder, "data.on_invalid=skip", "data.validation_split=0"), TOKENIZER)
    assert [(p.file, p.line) for p in prepared.splits[0].problems] == [(str(folder / "a.jsonl"), 700), (str(folder / "b.parquet"), 4501)]
    assert len(prepared.train) == 6198 and prepared.train[-1].file == str(folder / "b.parquet") and prepared.train[-1].line == 5000


def test_num_workers_is_checked():
    from trainer.errors import UserError

    with pytest.raises(UserError, match=r"data.num_workers"):
        config("d.jsonl", "data.num_workers=0")


@pytest.mark.integration
def test_trainer_data_shows_progress_with_rate_and_time_left(tmp_path, tiny_model_dir):
    from conftest import run_trainer

    data = write_data(tmp_path / "d.jsonl", 2500)
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{name_or_path: {tiny_model_dir}}}\ndata: {{train: {data}, max_seq_length: 96}}\ntraining: {{epochs: 1}}\n")
    result = run_trainer("data", "--config", str(path), env={"TRAINER_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Preparing data: 100%" in result.stderr and "records/s" in result.stderr and "2.50k/2.50k" in result.stderr
    again = run_trainer("data", "--config", str(path), env={"TRAINER_CACHE": str(tmp_path / "cache")})
    assert "Preparing data" not in again.stderr and again.stdout == result.stdout  # from the cache


def test_preference_pairs_go_into_the_store_as_two_rows_each(tmp_path):
    from trainer.data.pipeline import load_examples, split_validation
    from trainer.data.preference import tokenize_pair

    rows = [{"prompt": [{"role": "user", "content": f"say {w} {i}"}], "chosen": [{"role": "assistant", "content": w * (1 + i % 3)}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i, w in enumerate(WORDS * 5)]
    rows[7]["rejected"] = rows[7]["chosen"]  # identical answers: a problem with its line
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(data, "training.objective=dpo", "data.validation_split=0.2", "data.on_invalid=skip")
    prepared = prepare_data(cfg, TOKENIZER)
    assert [(p.line, "identical" in p.message) for p in prepared.splits[0].problems] == [(8, True)]
    pairs, _ = load_examples(str(data), cfg)
    train, validation = split_validation(pairs, 0.2, cfg.training.seed)
    encode = Tokenizer(TOKENIZER, resolve_template("tokenizer", TOKENIZER), "assistant", 96)
    for split, stored in ((train, prepared.train), (validation, prepared.validation)):
        expected = [tokenize_pair(encode, pair, i)[0] for i, pair in enumerate(split)]
        assert len(stored) == len(expected)
        for got, want in zip(stored, expected):
            assert got.index == want.index and got.line == want.line and got.length == want.length
            assert tuple(got.chosen.labels) == tuple(want.chosen.labels) and tuple(got.rejected.input_ids) == tuple(want.rejected.input_ids)
    assert prepared.train.lengths.tolist() == [p.length for p in prepared.train]


def test_a_preparation_that_stops_on_a_problem_leaves_nothing_behind(tmp_path):
    from trainer.errors import UserError

    data = tmp_path / "d.jsonl"
    data.write_text('{not json\n')
    with pytest.raises(UserError, match="no readable examples"):  # raised half way through the preparation
        prepare_data(config(data), TOKENIZER)
    assert not list(cache.cache_root().glob(".tmp-*")) and entries() == []
