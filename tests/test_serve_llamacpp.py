"""`trainer serve` on llama.cpp's own server (llama-server, built by `trainer backends setup llama.cpp`), spoken to by
the official `openai` client: many clients at once, LoRA runs sharing one base, the engine killed under load, bad
requests, and the API key. The demo GGUF serves where the point needs no run; the SmolLM2 demo run (slow) where answers
are checked against `trainer generate`."""
import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from conftest import run_trainer, validation_prompts
from test_serve import KEY, start_server, stop_server

pytestmark = [pytest.mark.llamacpp, pytest.mark.integration]


def openai_client(port: int, key: str = "none", timeout: float = 900):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=timeout)


@pytest.fixture(scope="module")
def demo_gguf():
    from trainer.demo import demo_model_path

    gguf = demo_model_path()
    if not gguf.exists():
        pytest.fail(f"{gguf} is missing: run `trainer download-demo-model` (make test does this)")
    return gguf


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "api-key"
    path.write_text(KEY + "\n")
    return str(path)


@pytest.fixture(scope="module")
def gguf_server(demo_gguf, key_file):
    """The demo GGUF behind `trainer serve --gguf`, with an API key."""
    process, port = start_server("--gguf", str(demo_gguf), "--api-key-file", key_file, "--parallel", "4", "--context", "1024")
    yield port, demo_gguf.stem
    stop_server(process)


def _zeroed_copy(run, target):
    """A second LoRA run on the same base: the demo run with its adapter's B matrices zeroed (it answers as the base
    model does), under its own name (output.dir)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(run / "model", target / "model")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["output"]["dir"] = str(target)
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    weights = target / "model" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}, weights)
    return target


def _generate(run, conversations, tokens):
    prompts = run.parent / f"{run.name}-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    result = run_trainer("generate", "--run", str(run), "--input", str(prompts), "--max-new-tokens", str(tokens), timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line)["answer"] for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_32_clients_on_two_adapters_over_one_base_get_their_own_answers(demo_run, tmp_path_factory):
    """Two LoRA runs on one base (the demo run, and a copy whose adapter is zero) served by one llama-server as two
    adapters; 32 clients at once, half asking each run, each a different prompt: every answer is the one `trainer
    generate` gives for that run and prompt (f32 GGUFs, so llama.cpp computes as transformers does), up to near-ties."""
    plain = _zeroed_copy(demo_run, tmp_path_factory.mktemp("plain") / "plain")
    conversations, _ = validation_prompts(16)
    tokens = 24
    expected = {"recipes": _generate(demo_run, conversations, tokens), "plain": _generate(plain, conversations, tokens)}
    assert expected["recipes"] != expected["plain"]  # the adapter changes the answers, so a mix-up would show
    process, port = start_server("--run", str(demo_run), "--run", str(plain), "--quant", "f32", "--parallel", "32",
                                 "--context", "512", timeout=1200)
    try:
        client = openai_client(port)
        assert sorted(m.id for m in client.models.list().data) == ["plain", "recipes"]
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert len(health["engines"]) == 1  # one llama-server, one copy of the base
        jobs = [(name, i) for i in range(16) for name in ("recipes", "plain")]

        def ask(job):
            name, i = job
            reply = client.chat.completions.create(model=name, messages=conversations[i], max_tokens=tokens, temperature=0, seed=i)
            assert reply.model == name
            return reply.choices[0].message.content.strip()

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask, jobs))
    finally:
        stop_server(process)
    log = process.stderr.read()
    assert "2 LoRA adapter(s)" in log and "converting it first" in log
    # Never mixed: each answer is nearer (a longer common start) to its own run and prompt's answer than to any other.
    # Equal, mostly: llama.cpp and torch sum in different orders, so a near-tie between two tokens may fall the other
    # way (measured: 7 of 8 equal, the 8th "1.2 lbs." for "1.25 lbs."); a mix-up would miss by far more.
    everything = [(n, k, text) for n in expected for k, text in enumerate(expected[n])]
    for (name, i), got in zip(jobs, answers):
        nearest = max(everything, key=lambda e: (_common_start(got, e[2]), (e[0], e[1]) == (name, i)))
        assert nearest[:2] == (name, i), (name, i, got, expected[name][i], nearest)
    equal = sum(got == expected[name][i] for (name, i), got in zip(jobs, answers))
    assert equal >= 0.75 * len(jobs), list(zip(jobs, answers))


def _common_start(a: str, b: str) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.slow
def test_gguf_lora_export_writes_the_adapter_alone(demo_run, tmp_path):
    from gguf import GGUFReader

    out = tmp_path / "recipes-lora.gguf"
    result = run_trainer("export", "--run", str(demo_run), "--to", "gguf-lora", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    reader = GGUFReader(str(out))
    kind = reader.fields["general.type"]
    assert bytes(kind.parts[kind.data[0]]).decode() == "adapter"
    names = [t.name for t in reader.tensors]
    assert names and all(n.endswith((".lora_a", ".lora_b")) for n in names)
    assert out.stat().st_size < 20e6  # rank 16 on a 135M model: a few MB, not the base's hundreds


def test_bad_requests_and_unknown_models_get_openai_errors(gguf_server):
    from openai import BadRequestError, NotFoundError

    port, name = gguf_server
    client = openai_client(port, KEY)
    with pytest.raises(NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert caught.value.status_code == 404 and "nope" in caught.value.message
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, status in [(b"{not json", 400), (json.dumps({"model": name}).encode(), 400), (b"[1, 2]", 400),
                         (json.dumps({"model": name, "messages": "hi"}).encode(), 400), (b"x" * 2_000_000, 413),
                         (json.dumps({"model": name, "messages": [{"role": "user", "content": "x " * 3000}]}).encode(), 400)]:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, headers=headers, timeout=60)
        assert response.status_code == status, (body[:60], response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert reply.choices[0].message.content is not None and reply.model == name  # still serving


def test_the_api_key_is_required(gguf_server, demo_gguf, cli):
    from openai import AuthenticationError

    port, name = gguf_server
    with pytest.raises(AuthenticationError):
        openai_client(port, "wrong").chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    assert [m.id for m in openai_client(port, KEY).models.list().data] == [name]
    result = cli("serve", "--gguf", str(demo_gguf), "--host", "0.0.0.0", env={"TRAINER_API_KEY": ""})
    assert result.returncode == 2 and "--api-key" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_engine_is_restarted_and_its_requests_get_a_503(demo_gguf):
    """llama-server killed (SIGKILL) while 8 clients wait for long answers, half streaming: every client gets a 503 error
    body (or, once its stream had begun, an error event) at once, none hangs; `trainer serve` says so, restarts the
    engine, and answers again."""
    from openai import APIStatusError

    process, port = start_server("--gguf", str(demo_gguf), "--parallel", "4", "--context", "1024")
    try:
        client = openai_client(port, timeout=120)
        name = demo_gguf.stem
        messages = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]

        def ask(i):
            try:
                if i % 2:
                    stream = client.chat.completions.create(model=name, messages=messages, max_tokens=2000, stream=True,
                                                            temperature=1.0, seed=i)
                    for chunk in stream:
                        pass
                    return "finished"
                client.chat.completions.create(model=name, messages=messages, max_tokens=2000, temperature=1.0, seed=i)
                return "finished"
            except APIStatusError as exc:
                return exc.status_code
            except Exception as exc:  # the SSE error event: the openai client raises APIError on it
                return type(exc).__name__ + ": " + str(exc)

        pid = httpx.get(f"http://127.0.0.1:{port}/health").json()["engines"][0]["pid"]
        with ThreadPoolExecutor(8) as pool:
            replies = [pool.submit(ask, i) for i in range(8)]
            time.sleep(4)  # all of them generating or queued in the engine
            os.kill(pid, signal.SIGKILL)
            started = time.monotonic()
            outcomes = [r.result(timeout=60) for r in replies]
            waited = time.monotonic() - started
        assert waited < 30
        assert all(o == 503 or "engine stopped while answering" in str(o) for o in outcomes), outcomes
        deadline = time.monotonic() + 120
        while httpx.get(f"http://127.0.0.1:{port}/health").status_code != 200:
            assert time.monotonic() < deadline, "the engine was not restarted"
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["engines"][0]["pid"] != pid
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
        assert reply.choices[0].message.content is not None
    finally:
        stop_server(process)
    log = process.stderr.read()
    assert "stopped (killed by SIGKILL): restarting it" in log and "answers again" in log, log[-3000:]
