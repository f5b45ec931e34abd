# Two commands do all the set-up: `make demo` and `make test`. While changing code, `make check` (under 2 minutes):
# lint and the unit tier, the tests that need no download, compiler, browser, AutoTrain or `trainer` subprocess.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Without an NVIDIA GPU, install the CPU build of torch first; an unpinned torch
# would pull several GB of CUDA packages.
TORCH_CPU := torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)

.PHONY: install demo demo-dpo test check lint docs bench bench-train bench-serve autotrain llama.cpp ui chromium go slurm-client postgres skypilot clean

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

# Preference tuning after the demo: DPO on the quickstart model's own mistakes (configs/recipes-dpo.yaml)
demo-dpo: demo
	$(VENV)/bin/trainer --config configs/recipes-dpo.yaml --resume

# The whole gate (CI runs it through .ci/run): lint, the docs site, the set-up every tier needs, then every test,
# the slowest 25 named.
test: $(STAMP) chromium go slurm-client postgres skypilot lint docs
	$(VENV)/bin/trainer download-demo-model
	$(VENV)/bin/trainer backends setup autotrain
	$(VENV)/bin/trainer backends setup llama.cpp
	TRAINER_SKYPILOT_PYTHON=$(abspath $(SKY_VENV))/bin/python $(PY) -m pytest --durations=25

# The quick loop: lint and the unit tier (markers in pyproject.toml; a test marked with what it needs leaves the tier).
# No set-up step: the unit tier needs only the installed package.
UNIT := not (integration or slow or browser or llamacpp or autotrain)
check: lint
	$(PY) -m pytest -q -m "$(UNIT)"

# Static checks (a few seconds): ruff (mistakes, import order) and mypy over trainer/ and ui/ (settings in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check trainer ui
	$(VENV)/bin/mypy

# The documentation site (docs/, mkdocs.yml) into site/. --strict: any warning, a broken link or anchor included,
# fails the build; the config reference is generated from trainer/config/schema.json (docs/hooks/config_reference.py).
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) bench/validate_startup.py

bench-train: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(VENV)/bin/trainer download-demo-model
	$(VENV)/bin/trainer backends setup autotrain
	$(PY) bench/train_throughput.py

# What `trainer serve` gains from exporting: tokens/s and time to first token per engine (needs a finished quickstart run)
bench-serve: $(STAMP)
	$(VENV)/bin/trainer backends setup llama.cpp
	$(PY) bench/serve_throughput.py --run runs/quickstart

# llama.cpp built once into the trainer cache, for `trainer export --to gguf|ollama` and `trainer serve`
llama.cpp: $(STAMP)
	$(VENV)/bin/trainer backends setup llama.cpp

# AutoTrain Advanced in its own environment (it pins transformers 4.48 and more), for backend: autotrain
autotrain: $(STAMP)
	$(VENV)/bin/trainer backends setup autotrain

# The web UI (Gradio) on http://127.0.0.1:7860
ui: $(STAMP)
	$(PY) -m pip install --quiet -e '.[ui]'
	$(VENV)/bin/trainer ui

# The browser test drives Debian's Chromium (Playwright's own browser download does not work everywhere).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "install Chromium (the browser test needs /usr/bin/chromium)"; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The Ollama Modelfile test renders TEMPLATE with Go's text/template, the engine Ollama uses.
go:
	@command -v go >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "install Go (the Modelfile test needs the go command)"; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq golang-go >/dev/null; }

# The launch files' tests read them with the tools that run them: Slurm's sbatch parses a script's options (no
# controller needed), SkyPilot's task loader reads the task. SkyPilot has its own environment: its pins (click<8.2,
# uvicorn<0.36) would downgrade what gradio and the API server use in .venv.
slurm-client:
	@command -v sbatch >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "install Slurm's client commands (the launch tests need sbatch)"; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq slurm-client >/dev/null; }

# PostgreSQL's server, for the test of `trainer api --database postgresql://...` (the tests start their own server)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "install PostgreSQL's server (the api's postgres test needs initdb)"; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

SKY_VENV := .venv-skypilot
skypilot: $(SKY_VENV)/.installed
$(SKY_VENV)/.installed:
	test -x $(SKY_VENV)/bin/python || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install --quiet 'skypilot==0.14.1'
	touch $@

clean:
	rm -rf $(VENV) $(SKY_VENV) .pytest_cache
