# The README's commands. Each target installs what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint system-deps lock bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/keymigration demo

system-deps:
	./scripts/system-deps.sh

test: setup system-deps lint
	$(PY) -m tests.support.warm
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

# The architecture (import layers), style and complexity (ruff, C901 <= 10), and strict types
# for the pure formats layer. Part of `make test`, so CI runs them.
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/rewrap_bench.py

# Re-pin constraints.txt from a fresh resolve of pyproject.toml.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q -e '.[test]'
	{ echo "# Pinned versions for reproducible installs (make setup, Dockerfile). Regenerate with: make lock"; \
	  .lockenv/bin/pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt
	rm -rf .lockenv

clean:
	rm -rf $(VENV) tests/interop/.gobuild
