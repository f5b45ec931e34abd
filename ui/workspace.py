"""Where the UI keeps uploads, configs and runs, and which paths a user may name.

Settings (environment variables):
  TRAINER_WORKDIR          the work directory (default: the current directory; on a Hugging Face Space, /data when
                           persistent storage is attached, else ./work)
  TRAINER_UI_SANDBOX=1     every path typed in the form must resolve inside the work directory (default on Spaces)
  TRAINER_UI_AUTH          user:password to require a login
  TRAINER_UI_MAX_UPLOAD_MB largest upload accepted (default 200)

Which config keys are paths is read from the schema (`x-path`), not listed here.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from trainer.patterns import HUB_DATASET

UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".yaml", ".yml")
FILE_SUFFIXES = UPLOAD_SUFFIXES + (".gguf", ".txt", ".safetensors", ".bin")  # a file name, never a Hub id


def on_spaces() -> bool:
    return bool(os.environ.get("SPACE_ID"))


@dataclass
class Workspace:
    root: Path
    sandbox: bool
    max_upload_mb: float = 200.0
    read_only_roots: tuple[Path, ...] = ()  # where relative paths are also looked up (outside the sandbox)

    @classmethod
    def from_env(cls) -> Workspace:
        default = Path("/data") if on_spaces() and os.access("/data", os.W_OK) else Path("work") if on_spaces() else Path.cwd()
        root = Path(os.environ.get("TRAINER_WORKDIR") or default).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        sandbox = os.environ.get("TRAINER_UI_SANDBOX", "1" if on_spaces() else "0") == "1"
        return cls(root, sandbox, float(os.environ.get("TRAINER_UI_MAX_UPLOAD_MB", "200")))

    def resolve(self, text: str, kind: str) -> tuple[str | None, str | None]:
        """(the path or Hub id to use, None) or (None, why it is refused). Relative paths are relative to the work
        directory. In the sandbox, absolute paths and paths leading out of the work directory are refused."""
        text = text.strip()
        if kind in ("model", "data") and HUB_DATASET.match(text) and not text.lower().endswith(FILE_SUFFIXES) \
                and not (self.root / text.split(":")[0]).exists():
            return text, None  # a Hub id, downloaded by the libraries, never a local path
        if self.sandbox:
            if kind == "program":
                return None, "is not allowed here: the UI runs AutoTrain from its default environment only"
            if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", text):
                return None, f"must be a path inside the work directory (relative, like uploads/train.jsonl), not {text!r}"
            path = (self.root / text).resolve()
            if not path.is_relative_to(self.root):
                return None, f"{text!r} leads out of the work directory; use a path inside it (like uploads/train.jsonl)"
            return str(path), None
        path = Path(text).expanduser()
        if path.is_absolute():
            return str(path), None
        for root in [self.root, *(self.read_only_roots if kind in ("model", "data") else ())]:
            # inputs may also come from read-only places (trainer's own demo data); outputs always go to the work dir
            if (root / path).exists():
                return str(root / path), None
        return str(self.root / path), None

    def check_paths(self, data: dict, path_keys: dict[tuple, str]) -> list[tuple[tuple, str]]:
        """Resolve every path-like value of config data in place; return (key path, message) for the refused ones."""
        problems = []
        for key, kind in path_keys.items():
            node: object = data
            for part in key[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or not isinstance(node.get(key[-1]), str):
                continue
            resolved, why = self.resolve(node[key[-1]], kind)
            if why:
                problems.append((key, why))
            else:
                node[key[-1]] = resolved
        return problems

    def save_upload(self, temp_path: str, name: str | None = None) -> Path:
        """Copy an uploaded file into <workdir>/uploads, under a safe name; refuse other types and big files."""
        source = Path(temp_path)
        name = re.sub(r"[^\w.-]+", "_", Path(name or source.name).name).lstrip(".") or "upload"
        if not name.lower().endswith(UPLOAD_SUFFIXES):
            raise ValueError(f"{name}: upload a {', '.join(UPLOAD_SUFFIXES)} file")
        size_mb = source.stat().st_size / 1e6
        if size_mb > self.max_upload_mb:
            raise ValueError(f"{name} is {size_mb:.0f} MB; the limit is {self.max_upload_mb:.0f} MB (TRAINER_UI_MAX_UPLOAD_MB)")
        # Content-addressed: two people uploading different files of the same name never overwrite each other,
        # and a file is complete before anyone can read it (written under a temporary name, then renamed).
        import hashlib

        digest = hashlib.sha256()
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        target = self.root / "uploads" / digest.hexdigest()[:12] / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.partial")
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        return target

    def relative(self, path: str | Path) -> str:
        """How to show a path in the form: relative to the work directory when inside it."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)


def path_keys(schema: dict) -> dict[tuple, str]:
    """{key path: x-path kind} for every schema property marked as a path."""
    found: dict[tuple, str] = {}

    def walk(node: dict, prefix: tuple) -> None:
        for name, sub in node.get("properties", {}).items():
            if "x-path" in sub:
                found[prefix + (name,)] = sub["x-path"]
            walk(sub, prefix + (name,))

    walk(schema, ())
    return found
