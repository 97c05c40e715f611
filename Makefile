# cxrdet: `make demo` runs the synthetic pipeline end to end, `make test` runs the test suite.
# Both run `make setup` first, which is idempotent: it reinstalls only when a requirements file changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PIP := $(VENV)/bin/pip --disable-pip-version-check -q

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "installing requirements into $(VENV) (first time: a few minutes)"
	@$(PIP) install --upgrade pip 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@set -o pipefail; $(PIP) install -r requirements.txt -r requirements-test.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@set -o pipefail; $(PIP) install --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@touch $(STAMP)

demo: setup
	@bash scripts/demo.sh

test: setup
	@$(VENV)/bin/python -m pytest

test-fast: setup
	@$(VENV)/bin/python -m pytest -m "not slow"

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf outputs .pytest_cache
