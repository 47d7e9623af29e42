# Quick start: `make run` (an agent on embedded dev defaults) and `make test`.
# Both create .venv when it is missing; `make test` also installs the Debian
# packages the tests drive (real clients such as dig and openssl).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck pytest debs install install-test bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

run: install
	$(BIN)/meshnode agent --dev

debs:
	bash scripts/install-debs.sh

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# bench/ scripts import their sibling helpers as top-level modules, so they
# are checked without the package-base mapping the rest of the tree uses.
typecheck: install-test
	$(BIN)/mypy meshnode tests simulations
	$(BIN)/mypy --no-explicit-package-bases bench

pytest: install-test debs
	$(BIN)/pytest

test: debs install-test lint typecheck pytest

# The multi-host cluster tests in network namespaces (root; see docs/chaos.md).
chaos: install-test debs
	$(BIN)/pytest tests/chaos

bench: install-test
	bash scripts/install-debs.sh bench
	$(BIN)/python bench/intentions.py
	$(BIN)/python bench/ca.py
	$(BIN)/python bench/dns_vs_dnsmasq.py
	$(BIN)/python bench/dissemination_vs_serf.py
	$(BIN)/python bench/gossip_vs_serf.py
	$(BIN)/python bench/limits_flood.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
