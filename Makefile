# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: torch 2.13.0 (a CPU build). A GPU user installs their own torch into $(VENV)
# first (or points VENV at an environment that has one); it is kept.
TORCH_SPEC ?= torch==2.13.0
OUT ?= runs/demo

.PHONY: setup demo test lint bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/cgc-lens demo --out $(OUT)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check cgc_lens tests scripts benchmarks

bench: setup
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done
