# cxrdet: `make demo` runs the synthetic pipeline end to end, `make test` runs the test suite.
# Both run `make setup` first, which is idempotent: it reinstalls only when a requirements file changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PIP := $(VENV)/bin/pip --disable-pip-version-check -q

.PHONY: setup mmdet demo demo-nih demo-vinbigdata demo-siim test test-fast bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "installing requirements into $(VENV) (first time: a few minutes)"
	@$(PIP) install --upgrade pip 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@set -o pipefail; $(PIP) install -r requirements.txt -r requirements-test.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@set -o pipefail; $(PIP) install --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@touch $(STAMP)

# mmdetection backend: builds mmcv from source on the first run (~10 min; wheel cached outside the repo), then seconds.
mmdet: setup
	@bash scripts/install_mmdet.sh

demo: setup mmdet
	@bash scripts/demo.sh

# VinBigData (14 classes, three readers, mAP at IoU > 0.4) on synthetic VinBigData-format data; no mmdet needed.
demo-vinbigdata: setup
	@bash scripts/demo_vinbigdata.sh

# SIIM-COVID (a code competition: study and image level, six-class mAP at IoU > 0.5) on synthetic SIIM-format data,
# ending with the offline bundle whose notebook reproduces the submission with the network cut; no mmdet needed.
demo-siim: setup
	@bash scripts/demo_siim.sh

# The multi-label classifier path on synthetic NIH ChestX-ray14-format data (no detector, so no mmdet needed).
demo-nih: setup
	@bash scripts/demo_nih.sh

# The two-worker tuning test starts a throw-away PostgreSQL server on loopback, and the browser test opens the
# report pages in headless Chromium; install both (Debian packages, need root) when missing. Where that is
# impossible the tests skip and say why. (The MLflow and optuna-dashboard tests need only the Python packages.)
services:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=" postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing for the tuning and browser tests"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
				|| echo "warning: could not install $$missing; their tests will skip"; \
		else echo "note: $$missing not installed and not root; their tests will skip"; fi; \
	fi

test: setup mmdet services
	@$(VENV)/bin/python -m pytest

test-fast: setup
	@$(VENV)/bin/python -m pytest -m "not slow"

bench: setup mmdet
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf outputs .pytest_cache
