"""Docker HEALTHCHECK: in UI mode (`docker run IMAGE ui`), healthy when the UI answers on its port; in API mode
(`docker run IMAGE api ...`), when the service's /health answers; a training run (`docker run IMAGE --config ...`) has
no port, and is healthy while it runs."""
import os
import sys
import urllib.request


def main(cmdline_file: str = "/proc/1/cmdline") -> int:
    with open(cmdline_file, "rb") as handle:
        args = handle.read().split(b"\0")
    if b"api" in args:
        port, path = "8000", "/health"  # trainer api's default port
    elif b"ui" in args:
        port, path = os.environ.get("PORT", "7860"), "/"
    else:
        return 0
    if b"--port" in args:
        port = args[args.index(b"--port") + 1].decode()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
