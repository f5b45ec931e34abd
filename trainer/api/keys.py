"""Who is asking: API keys and the owners they stand for.

`--api-keys FILE` holds one `OWNER KEY` pair a line (# comments); TRAINER_API_KEY alone is one key for the owner
`user`. Without keys the service only listens on this machine (as `trainer serve`), and everyone is the owner
`local`. Each owner sees only its own files, jobs and models; another owner's are answered 404, as missing ones.
"""
from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import Problem, UserError

_OWNER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")  # part of ft:<base>:<owner>:<suffix>:<id>
LOCAL_OWNER = "local"


@dataclass(frozen=True)
class Keys:
    pairs: tuple[tuple[str, bytes], ...]  # (owner, key)

    @property
    def required(self) -> bool:
        return bool(self.pairs)

    def owner(self, authorization: str) -> str | None:
        """The owner of the bearer key in an Authorization header, or None. Every key is compared, each in constant
        time, so the answer's timing tells nothing about which key came close."""
        if not self.pairs:
            return LOCAL_OWNER
        given = authorization[7:].strip().encode() if authorization[:7].lower() == "bearer " else b""
        found = None
        for owner, key in self.pairs:
            if hmac.compare_digest(given, key) and given:
                found = owner
        return found


def load_keys(file: str | None) -> Keys:
    if file is None:
        key = os.environ.get("TRAINER_API_KEY")
        return Keys((("user", key.encode()),) if key else ())
    try:
        text = Path(file).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--api-keys {file}: {exc.strerror or exc}") from None
    problems: list[Problem] = []
    pairs: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not _OWNER.match(parts[0]):
            problems.append(Problem("write `OWNER KEY` (owner: lower-case letters, digits, '-', '_')", file=file, line=number))
        elif len(parts[1]) < 16:
            problems.append(Problem(f"the key of {parts[0]} is shorter than 16 characters: use a long random one "
                                    "(python -c 'import secrets; print(secrets.token_urlsafe(32))')", file=file, line=number))
        elif any(key == parts[1].encode() for _, key in pairs):
            problems.append(Problem("this key is given twice: each key is one owner", file=file, line=number))
        else:
            pairs.append((parts[0], parts[1].encode()))
    if problems:
        raise UserError(problems, title=f"--api-keys {file}:")
    if not pairs:
        raise UserError(f"--api-keys {file} holds no keys: write one `OWNER KEY` pair a line")
    return Keys(tuple(pairs))
