"""The Docker image, without a Docker engine: the Dockerfile lints clean, and what its entrypoint runs works."""
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_trainer

DOCKERFILE = (REPO / "Dockerfile").read_text()


@pytest.mark.integration
def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    assert 'ENTRYPOINT ["trainer"]' in DOCKERFILE and "HEALTHCHECK" in DOCKERFILE
    assert re.search(r"^USER 1000$", DOCKERFILE, re.M)  # not root
    assert 'VOLUME ["/data", "/runs", "/cache"]' in DOCKERFILE
    for arg in ("CUDA_IMAGE", "TORCH_VERSION", "TORCH_INDEX", "FLASH_ATTN"):
        assert f"ARG {arg}=" in DOCKERFILE
    assert "FROM gpu AS autotrain" in DOCKERFILE
    extras = re.search(r'pip install "\.\[([a-z,]+)\]"', DOCKERFILE)
    assert extras and {"gpu", "ui", "serve", "api", "postgres"} <= set(extras.group(1).split(","))  # trainer api in the image
    assert re.search(r"^EXPOSE 7860 8000$", DOCKERFILE, re.M)
    assert not re.search(r"^(ENV|ARG)\b.*HF_TOKEN", DOCKERFILE, re.M)  # a token comes from `docker run -e` only
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M):
        assert (REPO / source).exists(), f"COPY {source}: missing from the repository"


@pytest.mark.integration
def test_entrypoint_commands_work_in_a_venv():
    assert run_trainer("--help").returncode == 0
    result = run_trainer("validate", "--config", "configs/quickstart.yaml")
    assert result.returncode == 0, result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.slow
def test_ui_mode_answers_and_the_healthcheck_sees_it(tmp_path):
    sys.path.insert(0, str(REPO / "docker"))
    from healthcheck import main as healthcheck

    port = _free_port()
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join([b"/opt/venv/bin/python", b"/opt/venv/bin/trainer", b"ui", b"--port", str(port).encode()]))
    assert healthcheck(str(cmdline)) == 1  # nothing listens yet
    env = {"TRAINER_WORKDIR": str(tmp_path / "work"), "TRAINER_UI_HOST": "127.0.0.1"}
    process = subprocess.Popen([sys.executable, "-m", "trainer", "ui", "--port", str(port)], cwd=tmp_path,
                               env={**__import__("os").environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while healthcheck(str(cmdline)) != 0 and time.time() < deadline:
            assert process.poll() is None, "trainer ui exited"
            time.sleep(0.5)
        assert healthcheck(str(cmdline)) == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
    training = tmp_path / "training-cmdline"
    training.write_bytes(b"\0".join([b"python", b"trainer", b"--config", b"/data/x.yaml"]))
    assert healthcheck(str(training)) == 0  # a training run has no port to ask
