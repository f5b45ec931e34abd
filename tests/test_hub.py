"""push_to_hub through the real huggingface_hub client, with only the HTTP transport replaced."""
import json

import httpx2
import pytest
from huggingface_hub.utils import set_client_factory

from trainer.errors import UserError
from trainer.hub import push_run

CANARY = "hf_canary_0123456789abcdef"


@pytest.fixture
def fake_hub():
    requests = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        path = request.url.path
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": "https://huggingface.co/me/model", "name": "me/model"})
        if path == "/api/validate-yaml":  # the model card's front matter is checked by the Hub
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/me/model/commit/abc", "commitOid": "abc" * 13 + "a"})
        return httpx2.Response(404, json={"error": f"unexpected {request.method} {path}"})

    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    yield requests
    from huggingface_hub.utils._http import default_client_factory

    set_client_factory(default_client_factory)


def make_run(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "adapter_config.json").write_text("{}")
    (run / "model" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (run / "README.md").write_text("# card")
    (run / "config.yaml").write_text("model: {}\n")
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "checkpoints" / "step-1" / "optimizer.pt").write_bytes(b"x")
    return run


def test_push_uploads_the_model_not_the_checkpoints_and_writes_no_token(tmp_path, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    run = make_run(tmp_path)
    url = push_run(run, "me/model", private=True)
    assert url == "https://huggingface.co/me/model/commit/abc"
    create = next(r for r in fake_hub if r.url.path == "/api/repos/create")
    commit = next(r for r in fake_hub if "/commit/" in r.url.path)
    assert create.headers["authorization"] == commit.headers["authorization"] == f"Bearer {CANARY}"
    assert json.loads(create.content)["visibility"] == "private"
    body = commit.content.decode()
    for name in ("model/adapter_config.json", "model/adapter_model.safetensors", "README.md", "config.yaml"):
        assert name in body
    assert "checkpoints" not in body
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_push_failure_names_the_fix_and_hides_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY)

    def refuse(request):
        return httpx2.Response(401, json={"error": f"Invalid token {CANARY}"})

    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    try:
        with pytest.raises(UserError) as info:
            push_run(make_run(tmp_path), "me/model", private=False)
    finally:
        from huggingface_hub.utils._http import default_client_factory

        set_client_factory(default_client_factory)
    assert "uploading" in str(info.value) and "huggingface-cli upload me/model" in str(info.value)
    assert CANARY not in str(info.value)
