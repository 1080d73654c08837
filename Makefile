# onionmesh: `make test` and `make demo` install what they need on Debian.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test files run on this many pytest-xdist workers, each with its own private Tor network
# (created only if one of its files needs it). Most real-network tests wait on tor, so
# three workers fit a 2-core machine; TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3

.PHONY: test test-fast lint demo bench system-deps clean

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: system-deps $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Pure-code tests only (no tor, no namespaces): for a quick edit loop.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not tor and not tornet and not netns"

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

bench: system-deps $(STAMP)
	$(PY) bench/descriptor.py

demo: system-deps $(STAMP)
	$(PY) -m onionmesh.demo

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
