# Two commands for a new user: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build pip installs first. On the project's CPU machines these come from local disk;
# elsewhere override, e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.drmgf-installed
DEMO ?= demo-runs

.PHONY: test test-all demo bench clean help

help:
	@echo "make demo   train, evaluate and deploy on the embedded data (creates .venv)"
	@echo "make test   run the test suite (creates .venv)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

demo: $(STAMP)
	DEMO=$(DEMO) BIN=$(BIN) sh scripts/demo.sh

bench: $(STAMP)
	$(BIN)/python bench/train_cost.py

clean:
	rm -rf $(DEMO) .pytest_cache
