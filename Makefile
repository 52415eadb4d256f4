# Two commands for a newcomer:
#   make demo   — set everything up and run a coordinator, a node and a generated image
#   make test   — set everything up and run the whole test suite (and the linter and the type checker)
# Both create .venv and install the project into it. On this project's CI machine torch is
# installed first as torch==2.13.0, a local CPU build; on a GPU machine, install the torch
# build for your CUDA version first instead (https://pytorch.org/get-started/locally/).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TINY_MODEL := .cache/tiny-sd
TINY_EXTRAS := .cache/tiny-extras
PROMPT ?= a lighthouse on a cliff at dusk

# The conformance suite (conformance/) runs third-party code, horde-sdk 0.33.3 in its strict mode, on
# Python 3.12 in its own environment against a live coordinator (SQLite, and PostgreSQL when
# HORDE_TEST_POSTGRES_DSN is set). PYTHON312 defaults to pyenv's 3.12 (`pyenv install 3.12` if absent),
# else a python3.12 on PATH.
PYTHON312 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12.*/bin/python) \
	$(shell command -v python3.12 2>/dev/null))
VENV312 ?= .venv312
HORDE_SDK ?= horde-sdk==0.33.3

.PHONY: demo test lint typecheck bench-short bench install clean conformance mutate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[node,test]"
	$(BIN)/pip install --quiet --no-deps "spandrel==0.4.2" "einops>=0.7"  # pyproject's postprocess extra, without torchvision
	touch $@

install: $(VENV)/.installed

$(TINY_MODEL)/model_index.json: $(VENV)/.installed
	$(BIN)/horde-node make-tiny-model $(TINY_MODEL)

$(TINY_EXTRAS)/extras.json: $(VENV)/.installed node/tiny_extras.py
	$(BIN)/horde-node make-tiny-extras $(TINY_EXTRAS)

demo: $(VENV)/.installed
	HORDE_CACHE_DIR=$(CURDIR)/.cache $(BIN)/horde demo "$(PROMPT)"  # the tiny model goes to .cache/tiny-sd, as for make test

lint: $(VENV)/.installed typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy, configured in pyproject.toml: strict on protocol/ (the wire contract), the defaults elsewhere.
typecheck: $(VENV)/.installed
	$(BIN)/python -m mypy

test: $(VENV)/.installed $(TINY_MODEL)/model_index.json $(TINY_EXTRAS)/extras.json lint
	HORDE_TINY_MODEL_DIR=$(CURDIR)/$(TINY_MODEL) HORDE_TINY_EXTRAS_DIR=$(CURDIR)/$(TINY_EXTRAS) \
		$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

$(VENV312)/.installed: Makefile
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found: pyenv install 3.12, or set PYTHON312" >&2; exit 1; }
	$(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(VENV312)/bin/pip install --quiet "$(HORDE_SDK)" "pytest>=8" "pytest-asyncio>=0.25.3"  # the SDK's own tests need it
	touch $@

# horde-sdk's own tests come from its source distribution (conformance/test_sdk_own_tests.py runs them).
SDK_SDIST := .cache/horde_sdk-0.33.3
$(SDK_SDIST)/tests: | $(VENV312)/.installed
	mkdir -p .cache
	$(VENV312)/bin/pip download --quiet --no-binary :all: --no-deps "$(HORDE_SDK)" -d .cache
	tar -xzf .cache/horde_sdk-0.33.3.tar.gz -C .cache
	touch $@

conformance: $(VENV)/.installed $(VENV312)/.installed $(SDK_SDIST)/tests
	HORDE_PROJECT_PYTHON=$(CURDIR)/$(BIN)/python HORDE_SDK_SDIST=$(CURDIR)/$(SDK_SDIST) \
		$(VENV312)/bin/python -m pytest -q -rs conformance $(PYTEST_ARGS)

# Mutation testing (docs/mutation.md): mutmut over protocol/ and the broker's money, dispatch and trust modules,
# as pyproject.toml's [tool.mutmut] lists them, each mutant against the fast API tests that reach it, on SQLite
# (the mutated modules hold no engine-specific SQL). The whole set takes hours on 2 cores, so it is not in CI:
# narrow it to what you changed, e.g. `make mutate MUTATE='coordinator.bank*'`. Results stay in mutants/ and a
# rerun tests only functions that changed since; `mutmut show NAME` shows a survivor's diff.
MUTATE ?=
MUTATE_JOBS ?= 2
mutate: $(VENV)/.installed
	env -u HORDE_TEST_POSTGRES_DSN $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTATE)
	$(BIN)/mutmut results

bench-short: $(VENV)/.installed $(TINY_MODEL)/model_index.json
	for script in bench/broker.py bench/depth.py bench/latency.py bench/node.py bench/abuse.py bench/observe.py bench/eta.py bench/node_stop.py bench/verify.py bench/scale.py bench/parked_floor.py; do \
		HORDE_TINY_MODEL_DIR=$(CURDIR)/$(TINY_MODEL) $(BIN)/python $$script --short || exit 1; \
	done

bench: $(VENV)/.installed $(TINY_MODEL)/model_index.json
	for script in bench/broker.py bench/depth.py bench/latency.py bench/node.py bench/abuse.py bench/observe.py bench/eta.py bench/node_stop.py bench/verify.py bench/scale.py bench/parked_floor.py; do \
		HORDE_TINY_MODEL_DIR=$(CURDIR)/$(TINY_MODEL) $(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf $(VENV) $(VENV312) .cache .pytest_cache .ruff_cache *.egg-info .mypy_cache mutants
