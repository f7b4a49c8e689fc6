# The two commands: `make demo` runs the whole path and prints what it measured; `make test` runs
# the tests. Both create .venv and install what they need on first use (a second run is fast).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= test

.PHONY: demo test bench clean
.DELETE_ON_ERROR:

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned, so that the project's `torch>=...` is already satisfied by it
$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

test: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python -m pytest -q

demo: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python demo.py

bench: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python -m bench reader
	$(BIN)/python -m bench transforms
	$(BIN)/python -m bench report > bench/results/REPORT.md

clean:
	rm -rf $(VENV) demo-data bench/data bench/.venv-nvtabular* .pytest_cache
