# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Without an NVIDIA GPU, install the CPU build of torch first; an unpinned torch
# would pull several GB of CUDA packages.
TORCH_CPU := torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)

.PHONY: install demo test bench bench-train autotrain clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifneq ($(HAS_GPU),yes)
	$(PY) -m pip install --quiet $(TORCH_CPU)
endif
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trainer download-demo-model
	$(VENV)/bin/trainer --config configs/quickstart.yaml --resume

test: $(STAMP)
	$(VENV)/bin/trainer download-demo-model
	$(VENV)/bin/trainer backends setup autotrain
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/validate_startup.py

bench-train: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(VENV)/bin/trainer download-demo-model
	$(VENV)/bin/trainer backends setup autotrain
	$(PY) bench/train_throughput.py

# AutoTrain Advanced in its own environment (it pins transformers 4.48 and more), for backend: autotrain
autotrain: $(STAMP)
	$(VENV)/bin/trainer backends setup autotrain

clean:
	rm -rf $(VENV) .pytest_cache
