"""llama.cpp, built once into the trainer cache from a pinned, published source.

PyPI's `llama-cpp-python` source distribution carries the whole llama.cpp tree: the GGUF converter
(`convert_hf_to_gguf.py` with its own `gguf-py`), the quantizer and the library. `setup()`:

1. downloads that sdist with pip (pinned: the converter, the quantizer and the library must agree
   on the GGUF format) and unpacks it into <cache>/llama.cpp/<version>-<cpu>/;
2. builds `libllama`, `llama-quantize` and `llama-server` (the engine `trainer serve` runs) there with CMake, once;
3. installs the `llama_cpp` Python package from the same sdist into trainer's environment without
   compiling it again (LLAMA_BUILD=OFF) and puts the libraries built in step 2 beside it.

A native build (`-march=native`, llama.cpp's default) died with "Illegal instruction" on the
virtual machines we test on, whose CPUID reports more than they run, and a cached build may be
reused on a similar machine: so the build is portable, with AVX2/FMA/F16C switched on only where
/proc/cpuinfo lists all three, and the cache folder is named after that choice.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError

VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is the tree we build and convert with
PACKAGE = f"llama-cpp-python=={VERSION}"
BUILD_TARGETS = ("llama", "llama-quantize", "llama-server")
# Part of the cache folder's name: a build made with other targets (the converter-and-quantizer build before
# llama-server was added) lives in its own folder, so old and new coexist and neither is rebuilt in place.
RECIPE = "server"
# What the llama_cpp package needs (its pyproject), and the converter beyond torch, transformers and numpy
# (its requirements-convert_hf_to_gguf.txt): Llama models' set_vocab tries sentencepiece first.
BINDING_NEEDS = ("typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3", "sentencepiece>=0.1.98,<0.3.0")


Say = Callable[[str], None]  # where progress goes: stderr by default, the web UI's log in the UI


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpu_flags() -> list[str]:
    """CMake switches for a build that runs on this machine and on others like it (see the module note)."""
    flags = ["-DGGML_NATIVE=OFF"]
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            words = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            words = set()
        if {"avx2", "fma", "f16c"} <= words:
            flags += ["-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"]
    return flags


def _flavour() -> str:
    return "avx2" if "-DGGML_AVX2=ON" in cpu_flags() else platform.machine().lower() or "generic"


@dataclass(frozen=True)
class LlamaCpp:
    """Where the built llama.cpp lives."""

    root: Path  # <cache>/llama.cpp/<version>-<flavour>-<recipe>

    @property
    def tree(self) -> Path:
        return self.root / "src" / "vendor" / "llama.cpp"

    @property
    def converter(self) -> Path:
        return self.tree / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.tree / "gguf-py"

    @property
    def bin(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def quantize(self) -> Path:
        return self.bin / "llama-quantize"

    @property
    def server(self) -> Path:
        return self.bin / "llama-server"

    @property
    def lora_converter(self) -> Path:
        return self.tree / "convert_lora_to_gguf.py"

    @property
    def done(self) -> Path:
        return self.root / ".complete"

    def converter_env(self) -> dict[str, str]:
        """The converter runs with its own gguf-py first on the path, not the `gguf` trainer installs."""
        path = os.pathsep.join([str(self.gguf_py), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return {**os.environ, "PYTHONPATH": path, "NO_LOCAL_GGUF": ""}


def default_location() -> LlamaCpp:
    from trainer.demo import cache_dir

    return LlamaCpp(cache_dir() / "llama.cpp" / f"{VERSION}-{_flavour()}-{RECIPE}")


def python_binding_problem() -> str | None:
    """Why `import llama_cpp` would not give the library built here (or the converter lacks a package), or None."""
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return "sentencepiece, which llama.cpp's converter needs, is not installed"
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"the llama_cpp Python package is not usable ({exc})"
    except (OSError, RuntimeError) as exc:  # its shared library failed to load
        return f"the llama_cpp library does not load ({exc})"
    installed = getattr(llama_cpp, "__version__", "?")
    if installed != VERSION:
        return f"llama_cpp {installed} is installed; trainer's converter and quantizer are {VERSION}"
    return None


def find() -> LlamaCpp | None:
    """The completed build, or None."""
    built = default_location()
    return built if built.done.is_file() and built.quantize.is_file() and built.server.is_file() else None


def require(say: Say = _say) -> LlamaCpp:
    """The build, made now if missing (minutes, once)."""
    return find() or setup(say=say)


def setup(say: Say = _say, jobs: int | None = None) -> LlamaCpp:
    """Download, build and install llama.cpp (see the module note). Idempotent; a killed build starts over."""
    built = default_location()
    if find() is None:
        _build(built, say, jobs or os.cpu_count() or 1)
    if python_binding_problem() is not None:
        _install_binding(built, say)
        problem = python_binding_problem()
        if problem is not None:
            raise UserError(f"llama.cpp was built in {built.root}, but {problem}.")
    say(f"llama.cpp ({PACKAGE}) is ready: {built.root}")
    return built


def _run(command: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-3000:]
        raise UserError(f"{what} failed (exit {result.returncode}):\n{tail}\n"
                        "cmake and a C++ compiler are needed (Debian/Ubuntu: apt-get install cmake g++).")


def _build(built: LlamaCpp, say: Say, jobs: int) -> None:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise UserError(f"building llama.cpp needs `{tool}`, which is not installed "
                            "(Debian/Ubuntu: apt-get install cmake g++; macOS: xcode-select --install and brew install cmake).")
    shutil.rmtree(built.root, ignore_errors=True)  # a build killed half-way is started over, never reused
    built.root.mkdir(parents=True)
    say(f"Building llama.cpp from {PACKAGE} into {built.root} (once; 10-30 minutes on 2 cores) ...")
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", "--dest", tmp, PACKAGE],
             f"pip download {PACKAGE}")
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        shutil.move(str(next(p for p in Path(tmp).iterdir() if p.is_dir())), built.root / "src")
    build = built.root / "build"
    _run(["cmake", "-S", str(built.tree), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
          "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DGGML_CCACHE=OFF",
          *cpu_flags()], "configuring llama.cpp")
    _run(["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *BUILD_TARGETS],
         "building llama.cpp")
    built.done.write_text(" ".join(cpu_flags()) + "\n")


def _install_binding(built: LlamaCpp, say: Say) -> None:
    """The llama_cpp package from the same sdist, compiled nothing, with the libraries built above."""
    say(f"Installing the llama_cpp Python package ({PACKAGE}) with the library built in {built.root} ...")
    env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"}
    _run([sys.executable, "-m", "pip", "install", "--quiet", *BINDING_NEEDS], "pip install " + " ".join(BINDING_NEEDS))
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(built.root / "src")],
         f"pip install {PACKAGE}", env=env)
    target = Path(_package_dir()) / "lib"
    target.mkdir(exist_ok=True)
    for library in built.bin.glob("lib*.so*"):
        shutil.copy2(library, target / library.name)


def _package_dir() -> str:
    found = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('llama_cpp').submodule_search_locations[0])"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise UserError(f"the llama_cpp package was installed but cannot be found: {found.stderr.strip()[-500:]}")
    return found.stdout.strip()
