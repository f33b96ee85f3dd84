# The two commands a newcomer runs (README): `make demo` and `make test`.
# Each installs what it needs (Debian packages, a virtual environment) first,
# idempotently.

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST  := $(VENV)/bin/pytest
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup host demo test lint test-unit test-integration test-vm bench clean

setup: host $(STAMP)

host:
	@scripts/setup-host.sh

$(STAMP): pyproject.toml scripts/setup-venv.sh
	scripts/setup-venv.sh
	@touch $@

demo: setup
	$(PY) -m atoll.demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PYTEST) --durations=40 tests

test-unit: setup
	$(PYTEST) tests/unit

test-integration: setup
	$(PYTEST) tests/integration

test-vm: setup
	$(PYTEST) tests/vm

bench: setup
	$(PY) -m atoll.bench

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
