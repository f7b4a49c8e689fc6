# The two commands: `make demo` runs the whole path and prints what it measured; `make test` runs
# the tests. Both create .venv and install what they need on first use (a second run is fast).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= test,ray,dali
# real torchrec for the to_torchrec() tests, without its CUDA fbgemm-gpu and heavy extras
TORCHREC := fbgemm-gpu-cpu==1.8.0
TORCHREC_NODEPS := torchrec==1.9.2 tensordict==0.15.3 pyvers==0.2.3 cloudpickle==3.1.2 \
	pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0

.PHONY: demo test bench clean redis-server
.DELETE_ON_ERROR:

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned, so that the project's `torch>=...` is already satisfied by it
$(VENV)/.installed-$(EXTRAS): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q $(TORCHREC)
	$(BIN)/python -m pip install -q --no-deps $(TORCHREC_NODEPS)
	touch $@

# the serving tests start a real redis-server on loopback; install it where the machine allows
redis-server:
	@command -v redis-server >/dev/null || apt-get install -y -q redis-server >/dev/null 2>&1 \
		|| sudo -n apt-get install -y -q redis-server >/dev/null 2>&1 \
		|| echo "redis-server could not be installed: the Redis tests will be skipped"

test: $(VENV)/.installed-$(EXTRAS) redis-server
	$(BIN)/python -m pytest -q

demo: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python demo.py

$(VENV)/.installed-bench: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),bench]"
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench reader
	$(BIN)/python -m bench transforms
	$(BIN)/python -m bench loader
	$(BIN)/python -m bench serving
	$(BIN)/python -m bench dedup
	$(BIN)/python -m bench storage
	$(BIN)/python -m bench audit
	$(BIN)/python -m bench distributed
	$(BIN)/python -m bench images
	$(BIN)/python -m bench report > bench/results/REPORT.md

clean:
	rm -rf $(VENV) demo-data bench/data bench/.venv-nvtabular* .pytest_cache
