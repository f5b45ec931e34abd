import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# The tiers (markers in pyproject.toml): the unit tier, `make check`, is every test without one of these.
OUT_OF_UNIT_TIER = ("integration", "slow", "browser", "llamacpp", "autotrain")
# Fixtures that download, compile or set up something, and the marker a test that uses them must carry.
FIXTURE_NEEDS = {"smollm2_tokenizer": "slow", "demo_run": "slow", "go_render": "integration", "autotrain_python": "autotrain"}
_running: list = []  # the test now running


def pytest_collection_modifyitems(config, items):
    """A test that uses a fixture of FIXTURE_NEEDS, even through another fixture, is marked for it."""
    unmarked = [f"{item.nodeid} uses {name}: mark it {marker}" for item in items for name, marker in FIXTURE_NEEDS.items()
                if name in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


def pytest_terminal_summary(terminalreporter):
    """Which CPU ran the tests, printed last, where a CI log's tail shows it: durations differ about 2x between a CPU
    that computes in bf16 and one that computes in fp32."""
    import platform

    from trainer.models import native_bf16

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else [platform.processor()]
    terminalreporter.write_line(f"CPU: {names[0] if names else 'unknown'}, {os.cpu_count()} cores, "
                                f"{'bf16' if native_bf16('cpu') else 'fp32'} training")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.remove(item)


def run_trainer(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `trainer` command line in a subprocess, as a user would (integration tests: the unit tier uses
    the cli fixture, trainer.cli.main in this process)."""
    if _running and not any(_running[-1].get_closest_marker(m) for m in OUT_OF_UNIT_TIER):
        raise AssertionError(f"{_running[-1].nodeid} runs trainer as a subprocess: mark it integration, or use the cli fixture")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the `trainer` command line in this process (trainer.cli.main), for the unit tier: cli(*args, cwd=, env=)
    returns what run_trainer returns (a CompletedProcess with the exit status and the output), without a new Python."""
    from trainer.cli import main

    def run(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as call:  # the directory and the environment of this call only, as a subprocess's
            call.chdir(cwd)
            for name, value in (env or {}).items():
                call.setenv(name, value)
            capsys.readouterr()
            try:
                code = main(list(args)) or 0  # None: sys.exit(None), status 0
            except SystemExit as exc:  # argparse's --help, --version and usage errors, as `python -m trainer` would end
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            output = capsys.readouterr()
        return subprocess.CompletedProcess(["trainer", *args], code, output.out, output.err)

    return run


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """In-process tests compute on tiny models, where torch's intra-op threads cost more than they give, and far more
    on a machine busy with other work: 30 steps of the tiny Llama took 36 s with 2 threads on 2 busy cores, 5 s with 1.
    This process only: `trainer` subprocesses keep their own threads, as a user's do."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tests get their own TRAINER_CACHE (so measured throughputs of tiny models never reach the user's),
    sharing the user's downloaded demo model, its converted copies and the llama.cpp build, which are slow to make."""
    from trainer.demo import cache_dir

    real = cache_dir()
    private = tmp_path_factory.mktemp("trainer-cache")
    for name in ("models", "gguf-models", "gguf-tokenizers", "llama.cpp"):  # llama.cpp: built once by make test
        (real / name).mkdir(parents=True, exist_ok=True)
        (private / name).symlink_to(real / name)
    os.environ["TRAINER_CACHE"] = str(private)
    yield private


@pytest.fixture
def in_repo(monkeypatch):
    """Relative paths in configs (data/recipes/...) are read from the repository root."""
    monkeypatch.chdir(REPO)
    return REPO


def read_expectations(path: Path) -> dict[str, list[str]]:
    """expected.txt of a corpus: "name: regex" lines, several per name allowed."""
    from collections import defaultdict

    out = defaultdict(list)
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pattern = line.partition(": ")
            out[name].append(pattern)
    return out


MINIMAL = """\
model:
  name_or_path: gpt2
data:
  train: data/recipes/train.jsonl
training:
  epochs: 1
"""


SPECIAL_TOKENS = ["<pad>", "</s>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|user|>", "<|assistant|>", "<|system|>"]


def make_char_tokenizer(chat_template: str | None = None):
    """A tiny real tokenizer: one id per character, plus the special tokens of the built-in templates.

    Ids: specials 0-10, then printable ASCII and newline from 11, so tests can read label lists.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars + ["<unk>"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer, from the GGUF that `make test` fetches."""
    from trainer.demo import demo_model_path
    from trainer.models import load_tokenizer

    path = demo_model_path()
    if not path.exists():
        pytest.fail(f"{path} is missing: run `trainer download-demo-model` (make test does this)")
    return load_tokenizer(str(path))


def tiny_llama(vocab_size: int = 128, seed: int = 0, attn: str = "sdpa", tie: bool = False):
    """A 2-layer Llama with hidden size 64, random weights (`tie`: the head shares the embeddings, as SmolLM2's does)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tie)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A folder with a tiny random Llama (2 layers, hidden 64) and the character tokenizer with the chatml template."""
    from trainer.data.templates import CHATML

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_char_tokenizer(CHATML)
    model = tiny_llama(vocab_size=len(tokenizer))
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TINY_DATA = [
    {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
    for w in ("red", "blue", "green", "pink", "gold", "grey", "teal", "navy", "ruby", "jade", "lime", "rose")
]


def tiny_config(tmp_path, model_dir, **training) -> Path:
    """A config training the tiny model on 12 short examples; keyword arguments override training.*."""
    import json

    import yaml

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TINY_DATA))
    config = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "validation": str(data), "max_seq_length": 64},
        # fp32 unless a test says otherwise: exact comparisons must not depend on whether this CPU has bf16
        "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 0.01, "warmup_ratio": 0.0, "seed": 1, "precision": "fp32", **training},
        "output": {"dir": str(tmp_path / "run")},
        "logging": {"log_every": 1},
    }
    for key in [k for k in training if "." in k]:
        section, name = key.split(".", 1)
        config["training"].pop(key)
        config.setdefault(section, {})[name] = training[key]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir):
    """The tiny model trained for 30 steps, in this process, once per session: the run that trainer generate, chat and
    serve are tested on (tests/test_generate.py, tests/test_serve.py). Tests read it and never write into it."""
    from trainer.cli import main

    tmp = tmp_path_factory.mktemp("gen")
    config = tiny_config(tmp, tiny_model_dir, max_steps=30, learning_rate=0.01)
    assert main(["--config", str(config)]) == 0
    return tmp / "run"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The quickstart on the real SmolLM2, shortened to 26 steps (2 epochs): a run directory whose answers are JSON lists."""
    out = tmp_path_factory.mktemp("demo-run") / "recipes"
    # float32 weights: `trainer generate` then computes as an exported GGUF is converted, not in bf16 (auto on CPUs with it)
    result = run_trainer("--config", "configs/quickstart.yaml", "--set", "training.epochs=null", "--set", "training.max_steps=26",
                         "--set", "model.dtype=float32",
                         "--set", "training.eval_every=null", "--set", "evaluation.after_training=false",
                         "--set", "data.validation=null", "--set", "data.validation_split=0",  # no validation pass: faster
                         "--set", f"output.dir={out}", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def validation_prompts(count: int) -> tuple[list[list[dict]], list[str]]:
    """The first `count` validation recipes of the quickstart: (conversations without the answer, reference answers)."""
    import json

    rows = [json.loads(line) for line in (REPO / "data" / "recipes" / "validation.jsonl").read_text().splitlines()[:count]]
    return [r["messages"][:-1] for r in rows], [r["messages"][-1]["content"] for r in rows]


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """Render an Ollama TEMPLATE with Go's text/template, the engine Ollama uses (tests/ollama_template/main.go,
    built once): go_render(template, messages) -> the prompt text."""
    import json
    import shutil

    go = shutil.which("go")
    assert go, "this test needs Go (make test installs Debian's golang-go)"
    tmp = tmp_path_factory.mktemp("go")
    built = subprocess.run([go, "build", "-o", str(tmp / "render"), str(REPO / "tests" / "ollama_template" / "main.go")],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "GOCACHE": str(tmp / "cache")})
    assert built.returncode == 0, built.stderr

    def render(template: str, messages: list[dict]) -> str:
        (tmp / "t.tmpl").write_text(template)
        (tmp / "m.json").write_text(json.dumps(messages))
        done = subprocess.run([str(tmp / "render"), str(tmp / "t.tmpl"), str(tmp / "m.json")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return render


def stop_mid_run(config, rows: int, timeout: float = 120):
    """`trainer --config` in a real process, sent SIGTERM once metrics.jsonl has `rows` rows: asserts it stopped as
    a stop must (exit 3, a checkpoint, the resume hint, no traceback); returns (stderr, the newest checkpoint, its step)."""
    import signal
    import subprocess
    import time

    from trainer.checkpoint import complete_checkpoints
    from trainer.errors import EXIT_STOPPED

    run = Path(config).parent / "run"
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= rows):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == EXIT_STOPPED, err
    assert "Continue with the same command plus --resume" in err and "Traceback" not in err
    saved = complete_checkpoints(run)
    assert saved, err
    return err, saved[-1], int(saved[-1].name.split("-")[1])
