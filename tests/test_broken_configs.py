"""Every broken config in tests/broken_configs gets its expected message and exit code 2, never a traceback."""
import re

import pytest

from conftest import REPO, read_expectations

CORPUS = REPO / "tests" / "broken_configs"


EXPECTED = read_expectations(CORPUS / "expected.txt")


def test_corpus_is_complete():
    files = {p.stem for p in CORPUS.glob("*.yaml")}
    assert files == set(EXPECTED), "every broken config needs expectations in expected.txt, and vice versa"
    assert len(files) >= 40


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_config_is_explained(name, cli):
    path = CORPUS / f"{name}.yaml"
    result = cli("validate", "--config", str(path.relative_to(REPO)), env={"HF_TOKEN": ""})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    for pattern in EXPECTED[name]:
        assert re.search(pattern, output), f"{pattern!r} not in:\n{output}"


def _write_bytes(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "maker, pattern",
    [
        (lambda p: _write_bytes(p, "bin.yaml", bytes(range(256)) * 4), r"binary file"),
        (lambda p: _write_bytes(p, "latin1.yaml", "model:\n  name_or_path: caf\xe9\n".encode("latin-1")), r":2: the file is not UTF-8"),
        (lambda p: _write_bytes(p, "big.yaml", b"# padding\n" * 5_000_000), r"the file is 50.0 MB; a config file is a few KB"),
        (lambda p: p, r"is a directory, not a config file"),
        (lambda p: p / "absent.yaml", r"no such config file"),
    ],
    ids=["binary", "not-utf8", "50MB", "directory", "missing"],
)
def test_unreadable_files_are_explained(tmp_path, maker, pattern, cli):
    path = maker(tmp_path)
    result = cli("validate", "--config", str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "Traceback" not in output
    assert re.search(pattern, output), output
