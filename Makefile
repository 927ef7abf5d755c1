# Two entry points for a fresh machine: `make demo` (main job) and `make test` (the whole suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/lowbit compile examples/tiny-llama.yaml -o artifacts/tiny-llama --overwrite
	$(BIN)/lowbit generate artifacts/tiny-llama --prompt "The quick brown fox" --prompt "def main():" --max-tokens 24

# one pytest-xdist worker per core (CI: 2); TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= auto

test: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check lowbit tests examples
	$(BIN)/ruff format --check lowbit tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache
