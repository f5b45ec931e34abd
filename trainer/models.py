"""Loading tokenizers (and, for training, models) from a Hub id, a local folder, or a .gguf file."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trainer.errors import UserError


def is_gguf(name_or_path: str) -> bool:
    return name_or_path.lower().endswith(".gguf")


def _gguf_cache(path: Path) -> Path:
    """Where the tokenizer read from a GGUF file is kept, so the (slow) GGUF parse happens once."""
    from trainer.demo import cache_dir

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf-tokenizers" / f"{path.stem}-{key}"


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = Path(os.path.expanduser(name_or_path))
    try:
        if is_gguf(name_or_path):
            if not path.is_file():
                raise UserError(f"model.name_or_path: no GGUF file at {name_or_path!r}.")
            cached = _gguf_cache(path)
            if cached.is_dir():
                tokenizer = AutoTokenizer.from_pretrained(cached)
            else:
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                partial = cached.with_name(cached.name + ".partial")
                tokenizer.save_pretrained(partial)
                os.replace(partial, cached) if not cached.exists() else None
        else:
            tokenizer = AutoTokenizer.from_pretrained(
                str(path) if path.exists() else name_or_path, revision=revision, trust_remote_code=trust_remote_code
            )
    except UserError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors ...
        raise UserError(_load_failure("tokenizer", name_or_path, exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_failure(what: str, name_or_path: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    local = os.path.exists(os.path.expanduser(name_or_path))
    message = f"model.name_or_path: could not load the {what} of {name_or_path!r}: {first}"
    if not local:
        message += (
            ". If this is a Hub id, the Hugging Face Hub may be unreachable from here (no network, or HF_HUB_OFFLINE=1): "
            "download the model where there is internet and point model.name_or_path at the local folder or .gguf file"
        )
    return message + "."
