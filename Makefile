# The two set-up commands are `make run` and `make test`; both build .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck migrate check bot bench torture certs dev-certs install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(PY) -m service migrate
	$(PY) -m service serve

bot: $(STAMP)
	$(PY) -m service migrate
	$(PY) -m service bot

migrate: $(STAMP)
	$(PY) -m service migrate

check: $(STAMP)
	$(PY) -m service check

lint: $(STAMP)
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/ruff format --check service tests bench
	$(VENV)/bin/mypy

# One pytest worker per core; `make test TEST_WORKERS=0` runs in one process (pdb, -x order).
TEST_WORKERS ?= auto

test: lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# The issue's sizes (5,000 completions, a 60 s Telegram outage, 10,000 bad requests, ...);
# `make test` runs the same scenarios at quick sizes.
torture: $(STAMP)
	TORTURE=full $(VENV)/bin/pytest tests/torture $(PYTEST_ARGS)

certs:
	deploy/certs.sh build

dev-certs:
	deploy/certs.sh dev

install:
	deploy/install.sh

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
