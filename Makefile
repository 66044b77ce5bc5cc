# One command per job; CI calls `make test` through .ci/run.
#
#   make demo    set up (first time only) and run the demo
#   make test    set up and run the test suite (2 pytest-xdist workers)
#   make bench   set up and run the benchmarks (both regimes, every section; ~10 min)
#   make bench-quick  the issue-13 targets table, dispatch-bound regime only (~1 min)
#   make lint    ruff + mypy --strict
#   make clean   remove caches and build outputs (keeps .venv; `make distclean` drops it)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
# Only this exact spec resolves to the local CPU wheel; anything looser pulls GBs of CUDA.
TORCH_SPEC := torch==2.13.0

.PHONY: install demo test bench bench-quick lint clean distclean

install: $(STAMP)

# torch goes in first, on its own, so the project's `torch>=2.3` is already satisfied
# when pip resolves the extras and never looks for another torch build.
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install --upgrade pip
	@if $(PY) -c 'import torch' 2>/dev/null; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  $(PIP) install '$(TORCH_SPEC)'; \
	fi
	$(PIP) install -e '.[dev,hf,ray,plot,parquet]'
	@$(MAKE) --no-print-directory graphviz-binary
	@touch $@

# graphviz's `dot` renders trace drawings; without it capture still works and only the
# drawing tests fail (with an error saying to install graphviz).
.PHONY: graphviz-binary
graphviz-binary:
	@if command -v dot >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; \
	else sudo="none"; fi; \
	if [ "$$sudo" != none ] && command -v apt-get >/dev/null 2>&1 \
	  && $$sudo apt-get update \
	  && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends graphviz \
	  && command -v dot >/dev/null 2>&1; then \
	  echo "installed graphviz: $$(dot -V 2>&1)"; \
	else \
	  echo "WARNING: could not install graphviz's 'dot' binary (needs apt-get and root or" \
	       "passwordless sudo). Drawing will fail; capture still works." >&2; \
	fi

demo: $(STAMP)
	$(PY) -m lens.demo

# pytest exits 5 when it collected nothing; that is a failure too (nothing was checked).
test: $(STAMP)
	@rc=0; $(PY) -m pytest -n 2 -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.streaming 64

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --only regimes --regime dispatch --quick

# Both checks always run; the target fails if either does.
lint: $(STAMP)
	@rc=0; \
	echo "ruff check lens tests"; $(PY) -m ruff check lens tests || rc=1; \
	echo "mypy lens"; $(PY) -m mypy lens || rc=1; \
	exit $$rc

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis \
	  demo-out bench-out .lens-cache $(STAMP)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
