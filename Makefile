# onionmesh: `make test` and `make demo` install what they need on Debian.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

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
	$(PY) -m pytest

# Pure-code tests only (no tor, no namespaces): for a quick edit loop.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not tor and not tornet and not netns"

lint: $(STAMP)
	$(PY) -m ruff check src tests bench

bench: system-deps $(STAMP)
	$(PY) bench/descriptor.py

demo: system-deps $(STAMP)
	$(PY) -m onionmesh.demo

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
