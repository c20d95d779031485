# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: torch 2.13.0 (a CPU build). A GPU user installs their own torch into $(VENV)
# first (or points VENV at an environment that has one); it is kept.
TORCH_SPEC ?= torch==2.13.0
OUT ?= runs/demo

.PHONY: setup demo test lint bench browser

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/cgc-lens demo --out $(OUT)

# The report test opens HTML in Debian's Chromium (driven by playwright from the test extra;
# no `playwright install`, which would download a browser).
BROWSER_INSTALL ?= yes
browser:
	@test "$(BROWSER_INSTALL)" = no || test -x /usr/bin/chromium || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: setup browser
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check cgc_lens tests scripts benchmarks notebooks

bench: setup
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done
