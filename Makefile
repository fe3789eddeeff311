# The two commands a newcomer needs:  make run  (train LeNet on Fashion-MNIST)  and  make test.
# Each makes or reuses .venv and installs what the project needs by itself.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# This machine has a CPU build of torch 2.13.0 on disk; users with GPUs may set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# Where this machine keeps its torch wheel (pip looks there first when it exists).
PIP_FIND := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: run test docs bench lint system clean

run: $(STAMP) system
	$(PY) -m cnnlab train

test: $(STAMP) system
	$(PY) -m ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	$(PY) -m pytest

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(STAMP) system
	$(PY) benchmarks/bench_ops.py
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_models.py --inference
	$(PY) benchmarks/bench_train.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_FIND) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_FIND) -e ".[dev]"
	touch $(STAMP)

# System packages (Debian's Fashion-MNIST, Chromium for the explorer's browser test), when root with apt.
system:
	@bash scripts/install-system.sh

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache .ruff_cache
