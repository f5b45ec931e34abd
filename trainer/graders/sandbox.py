"""The python grader: the user's `def grade(sample, item) -> float`, run in a separate Python process per line.

What the separate process gives, and what it does not:
- A time limit: the process is killed after `timeout` wall-clock seconds (default 120, OpenAI's 2 minutes), and
  RLIMIT_CPU stops it after as many CPU seconds should the kill come late.
- A memory limit: RLIMIT_AS caps its address space at `memory_mb` (default 2048, OpenAI's 2 GB); an allocation past it
  raises MemoryError in the grader. It counts address space, not resident memory: a library that reserves a lot
  (torch does) needs a higher limit than it uses.
- No sockets from Python: before the user's code runs, socket.socket, socket.create_connection, socket.getaddrinfo
  and the other ways Python opens a connection are replaced by functions that raise PermissionError. This is a guard
  against a grader that calls out by accident, NOT a security boundary: code that reaches the OS itself (ctypes, a
  subprocess running curl) still has the network, and the process runs as the user who runs trainer, with their
  files. A real network namespace (unshare -n) needs root or user namespaces, which trainer cannot count on. Run
  graders you did not write in a container without network.
- A crash of the grader (an exception, sys.exit, a segfault) ends that process only; the line's grade records why.
The process is started with `python -I` (no PYTHON* variables, no user site-packages) and this interpreter's
packages. What the grader prints goes to its stderr, kept for the error message; the result comes back on stdout.
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

MAX_SOURCE_BYTES = 256_000  # OpenAI's limit on a python grader's source

# Runs in the child: set the limits, block sockets, run the source, write {"score": x} or {"error": "..."} to stdout.
_CHILD = r'''
import json, os, resource, sys, traceback
request = json.loads(sys.stdin.read())
result_out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # the grader's own prints go to stderr: stdout carries only the result
memory = request["memory_bytes"]
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
cpu = request["cpu_seconds"]
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

import socket, _socket

def _no_network(*args, **kwargs):
    raise PermissionError("network access is blocked in a python grader (trainer blocks Python's sockets)")

class _NoSocket(_socket.socket):
    def __init__(self, *args, **kwargs):
        _no_network()

for module in (socket, _socket):
    module.socket = _NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        if hasattr(module, name):
            setattr(module, name, _no_network)

def reply(**fields):
    result_out.write(json.dumps(fields))
    result_out.flush()

try:
    namespace = {"__name__": "grader"}
    exec(compile(request["source"], "<grader source>", "exec"), namespace)
    grade = namespace.get("grade")
    if not callable(grade):
        reply(error="the source defines no function grade(sample, item)")
    else:
        value = grade(request["sample"], request["item"])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            reply(error=f"grade() returned {type(value).__name__} {repr(value)[:80]}, not a number: return a float such as 1.0")
        else:
            reply(score=float(value))
except MemoryError:
    reply(error=f"grade() ran out of memory (the limit is {memory // 2**20} MB: memory_mb)")
except BaseException as exc:
    sys.stderr.write(traceback.format_exc())
    reply(error=f"grade() raised {type(exc).__name__}: {exc}"[:500])
'''


class GraderFailed(Exception):
    """The python grader gave no score for one line; the message says why."""


def run_python_grader(source: str, sample: Mapping[str, Any], item: Mapping[str, Any], timeout: float, memory_mb: int) -> float:
    """The score `grade(sample, item)` returns, run in a child process under the limits; GraderFailed otherwise."""
    request = json.dumps({"source": source, "sample": sample, "item": item, "memory_bytes": memory_mb * 2**20,
                          "cpu_seconds": max(1, math.ceil(timeout))})
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=request, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GraderFailed(f"grade() took longer than {timeout:g} s (timeout) and was stopped.") from None
    try:
        result = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        raise GraderFailed(_died(done.returncode, timeout, done.stderr))
    if "error" in result:
        raise GraderFailed(_with_output(str(result["error"]), done.stderr))
    score = result.get("score")
    if not isinstance(score, float) or not math.isfinite(score):
        raise GraderFailed(f"grade() returned {score}, not a finite number.")
    return score


def _died(code: int, timeout: float, stderr: str) -> str:
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        why = f"used more than {max(1, math.ceil(timeout))} s of CPU (timeout) and was stopped"
    elif code < 0:
        why = f"was ended by signal {signal.Signals(-code).name}"
    else:
        why = f"exited with code {code} before giving a score"
    return _with_output(f"the grader process {why}.", stderr)


def _with_output(message: str, stderr: str) -> str:
    tail = stderr.strip().splitlines()[-6:]
    return message + ("\n" + "\n".join(tail) if tail else "")
