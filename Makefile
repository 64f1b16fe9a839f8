# The two commands of the README:
#   make run    set up .venv and run the whole pipeline on the embedded synthetic replica
#   make test   set up .venv and run every test (unit, workflow, integration)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= all

.PHONY: setup run test lint clean
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "hemaflow needs Python 3.11; run: make PYTHON=python3.11 ..."'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -ra tests

lint: setup
	$(BIN)/snakemake --lint

clean:
	rm -rf results/* .snakemake data/raw/cnmc-replica
