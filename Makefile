# The README's two commands: `make demo` (main job) and `make test` (test suite).
# Each creates .venv if missing and installs torch first (TORCH_SPEC), then the project.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: install browser demo replicate test test-slow lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the dashboards' browser tests (never a downloaded browser); without
# it (no root, no apt) those tests skip with a message.
browser:
	@test -x $(CHROMIUM) || apt-get install -y -q chromium >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) \
		|| echo "warning: could not install chromium: the browser tests will be skipped"

demo: install
	$(BIN)/python train.py

# The Towards Monosemanticity replication (29 min on 2 idle Xeon cores, 32 on an AVX2 EPYC):
# three SAEs (A and A' on toy-1l, B on toy-1l-b), the analysis, and the report, copied to docs/replication/
replicate: install
	$(BIN)/python train.py -m experiment=replicate_monosemanticity \
		replication.publish_dir=docs/replication

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check .
