# The two commands of the README:
#   make run    set up .venv and run the whole pipeline on the embedded synthetic replica
#   make test   set up .venv and run every test (unit, workflow, integration)
# On a machine with an NVIDIA GPU, `make setup GPU=1` (or `make run GPU=1`) installs the CUDA
# build of the same TensorFlow release in place of the CPU-only one; then set
# train.accelerator: gpu (README, "Training on a GPU").
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= all
GPU    ?= 0
TF_VERSION := $(shell sed -n 's/^tensorflow_cpu==//p' requirements.lock)

.PHONY: setup run test lint pull clean
setup: $(VENV)/.installed $(if $(filter 1,$(GPU)),$(VENV)/.gpu)

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "hemaflow needs Python 3.11; run: make PYTHON=python3.11 ..."'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Both wheels provide the `tensorflow` package, so the CPU one goes first; -c keeps every
# shared dependency at its locked version. To go back: rm -rf $(VENV) && make setup.
$(VENV)/.gpu: $(VENV)/.installed
	$(BIN)/pip uninstall --quiet --yes tensorflow-cpu
	$(BIN)/pip install --quiet -c requirements.lock "tensorflow[and-cuda]==$(TF_VERSION)"
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES)  # with profiles/default, which Snakemake reads by itself

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -ra --durations=15 tests

lint: setup
	$(BIN)/snakemake --lint

# Reviewers: fetch every artifact, check it matches the committed code and params, then
# record it as current for Snakemake (dvc pull leaves fresh mtimes in no particular order;
# docs/dvc-and-snakemake.md explains why the touch is needed and when it is safe).
pull: setup
	$(BIN)/dvc pull
	@$(BIN)/dvc status --quiet || { $(BIN)/dvc status; echo "dvc status is not clean: the pulled outputs do not match this checkout; not adopting them." >&2; exit 1; }
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --touch --forceall --cores 1 --quiet

clean:
	rm -rf results/* .snakemake data/raw/cnmc-replica
