# Two commands do all the set-up on a fresh clone:
#   make demo   create .venv if missing, install, run the tiny pipeline end to end
#   make test   same set-up, then the full test suite
#   make experiments  the paper's findings at small scale (`radio experiment all`, regenerates README)
#   make typecheck  mypy over the package (settings in pyproject.toml); CI runs it and make test
#   make lint       ruff check + ruff format --check over the repo (settings in pyproject.toml); CI runs it
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIPELINE ?= tiny

.PHONY: demo test typecheck lint bench experiments install clean

install: $(STAMP)

# Reinstall only when the dependency list changes. torch resolves to the release on this
# machine's disk (the requirement range admits it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh $(PIPELINE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

typecheck: $(STAMP)
	$(BIN)/python -m mypy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	bash scripts/bench.sh

experiments: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/radio experiment all

clean:
	rm -rf data/sample data/store.zarr runs/tiny
