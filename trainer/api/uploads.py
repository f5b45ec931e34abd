"""A multipart upload (POST /v1/files) streamed to disk as it arrives, never whole in memory, and stopped as soon as
it is larger than the limit. The client's file name is kept as a label only: the file is written to a path the
service chose."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

MAX_FIELD_BYTES = 1024  # purpose and the like


class UploadProblem(ValueError):
    """What is wrong with an upload: (HTTP status, message, param)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    bytes: int = 0  # of the file part


class _Parts:
    """The parser's callbacks: headers of each part, the `file` part written to `target`, other parts kept as text."""

    def __init__(self, target: Path, max_bytes: int):
        self.target, self.max_bytes = target, max_bytes
        self.upload = Upload()
        self.headers: dict[str, str] = {}
        self.pending_name, self.pending_value = b"", b""
        self.name: str | None = None
        self.value = b""
        self.handle: IO[bytes] | None = None

    def part_begin(self) -> None:
        self.headers, self.name, self.value = {}, None, b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.pending_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.pending_value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.pending_name.decode("latin-1").lower()] = self.pending_value.decode("latin-1")
        self.pending_name, self.pending_value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get("content-disposition", ""))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if self.name != "file" or self.handle is not None:
                raise UploadProblem(400, "send one file, in the form field `file`", "file")
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")[:255]
            self.handle = open(self.target, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.handle is not None and self.name == "file" and self.upload.filename is not None and not self.handle.closed:
            self.upload.bytes += end - start
            if self.upload.bytes > self.max_bytes:
                raise UploadProblem(413, f"the file is larger than this service accepts ({self.max_bytes} bytes)", "file")
            self.handle.write(data[start:end])
        else:
            self.value += data[start:end]
            if len(self.value) > MAX_FIELD_BYTES:
                raise UploadProblem(400, f"the form field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes", self.name)

    def part_end(self) -> None:
        if self.handle is not None and not self.handle.closed and self.name == "file":
            self.handle.close()
        elif self.name:
            self.upload.fields[self.name] = self.value.decode("utf-8", "replace")


async def receive_upload(chunks: AsyncIterator[bytes], content_type: str, target: Path, max_bytes: int,
                         seconds: float) -> Upload:
    """Parse the body into `target` (the file part) and the other fields; UploadProblem when it is not an upload
    this service takes. `target` is removed on any problem."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UploadProblem(400, "upload the file as multipart/form-data (the OpenAI client does: client.files.create)")
    parts = _Parts(target, max_bytes)
    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": parts.part_begin, "on_header_field": parts.header_field, "on_header_value": parts.header_value,
        "on_header_end": parts.header_end, "on_headers_finished": parts.headers_finished, "on_part_data": parts.part_data,
        "on_part_end": parts.part_end})
    try:
        with anyio.fail_after(seconds):
            async for chunk in chunks:
                await run_in_threadpool(parser.write, chunk)  # the disk writes happen off the event loop
        parser.finalize()
    except TimeoutError:
        target.unlink(missing_ok=True)
        raise UploadProblem(408, f"the upload did not arrive within {seconds:g} s") from None
    except UploadProblem:
        target.unlink(missing_ok=True)
        raise
    except Exception as exc:  # the parser's own errors: a malformed body
        target.unlink(missing_ok=True)
        raise UploadProblem(400, f"the multipart body could not be read: {exc}") from None
    finally:
        if parts.handle is not None:
            parts.handle.close()
    if parts.upload.filename is None:
        raise UploadProblem(400, "the upload holds no file: send it in the form field `file`", "file")
    return parts.upload


def jsonl_problem(path: Path, filename: str) -> str | None:
    """Why a fine-tune upload is not JSON lines (one object a line), or None. The records' content is checked by
    trainer when a job uses the file."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                return f"{filename}:{number}: not a JSON line ({exc}); a fine-tune file holds one JSON object a line (.jsonl)"
            if not isinstance(record, dict):
                return f"{filename}:{number}: a fine-tune file holds one JSON object a line, found {type(record).__name__}"
    return None


def count_lines(path: Path) -> int:
    """The records of a JSONL file (its non-blank lines)."""
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())
