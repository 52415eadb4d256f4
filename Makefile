# Two commands for a newcomer:
#   make demo   — set everything up and run a coordinator, a node and a generated image
#   make test   — set everything up and run the whole test suite (and the linter)
# Both create .venv and install the project into it. On this project's CI machine torch is
# installed first as torch==2.13.0, a local CPU build; on a GPU machine, install the torch
# build for your CUDA version first instead (https://pytorch.org/get-started/locally/).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TINY_MODEL := .cache/tiny-sd
PROMPT ?= a lighthouse on a cliff at dusk

.PHONY: demo test lint bench-short bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[node,test]"
	touch $@

install: $(VENV)/.installed

$(TINY_MODEL)/model_index.json: $(VENV)/.installed
	$(BIN)/horde-node make-tiny-model $(TINY_MODEL)

demo: $(VENV)/.installed
	$(BIN)/horde demo "$(PROMPT)"

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: $(VENV)/.installed $(TINY_MODEL)/model_index.json lint
	HORDE_TINY_MODEL_DIR=$(CURDIR)/$(TINY_MODEL) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench-short: $(VENV)/.installed $(TINY_MODEL)/model_index.json
	for script in bench/broker.py bench/depth.py bench/latency.py bench/node.py bench/abuse.py; do \
		HORDE_TINY_MODEL_DIR=$(CURDIR)/$(TINY_MODEL) $(BIN)/python $$script --short || exit 1; \
	done

bench: $(VENV)/.installed $(TINY_MODEL)/model_index.json
	for script in bench/broker.py bench/depth.py bench/latency.py bench/node.py bench/abuse.py; do \
		HORDE_TINY_MODEL_DIR=$(CURDIR)/$(TINY_MODEL) $(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache *.egg-info
