# fedgate: two commands set everything up. `make up` runs a federation, `make test` the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
LLMSTAMP := $(VENV)/.installed-llm
# llama-cpp-python (the llm extra) compiles from source, ~7 min on 2 idle cores (22 min
# on a busy one). Pin the instruction sets: a native build dies with "Illegal instruction"
# on some CPUs. pip's wheel cache (~/.cache/pip/wheels) makes every later install instant.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
# LLM=0 skips it (the real-model tests then skip themselves).
LLM ?= 1

# constraints.txt pins every dependency (reproducible installs); `make lock` refreshes it.
PIN    := -c constraints.txt

.PHONY: up up-llm test bench lint typecheck clean install install-dev install-llm lock

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fedgate needs Python 3.11+ (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q $(PIN) -e .
	@touch $@

$(DEVSTAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q $(PIN) -e '.[dev]'
	@touch $(STAMP) $@

$(LLMSTAMP): pyproject.toml constraints.txt | $(DEVSTAMP)
	@echo "installing fedgate[llm] (first time: builds llama-cpp-python, several minutes)"
	$(BIN)/python -m pip install -q $(PIN) -e '.[dev,llm]'
	@touch $@

install: $(STAMP)
install-dev: $(DEVSTAMP)
install-llm: $(LLMSTAMP)

up: $(STAMP)
	$(BIN)/fedgate up $(ARGS)

up-llm: $(LLMSTAMP)
	$(BIN)/fedgate up --llm $(ARGS)

test: $(DEVSTAMP) $(if $(filter 1,$(LLM)),$(LLMSTAMP))
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(DEVSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

typecheck: $(DEVSTAMP)
	$(BIN)/mypy

# Refresh constraints.txt: resolve the newest versions pyproject.toml allows in a scratch
# venv, then freeze them. Review the diff, run `make test`, commit.
lock:
	rm -rf .lockenv
	$(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install -q --upgrade pip
	.lockenv/bin/python -m pip install -q -e '.[dev,llm]'
	{ echo "# Pinned versions of every package fedgate installs (make install, make test, make up)."; \
	  echo "# Regenerate with \`make lock\` (a fresh venv, the newest allowed versions, then pip freeze)."; \
	  .lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^fedgate'; } > constraints.txt
	rm -rf .lockenv
	@echo "constraints.txt refreshed: review 'git diff constraints.txt', then make test"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# -- bench/peers: fedgate side by side with sglang-router and LiteLLM (issues 13, 14) --
# Each peer and the load generator (aiperf) gets a venv of its own under PEERS_DIR, built
# once, never by `make test` (LiteLLM alone pulls in hundreds of MB).
PEERS_DIR ?= $(HOME)/.cache/fedgate-peers
PEERS_ARGS ?=

.PHONY: peers-setup bench-peers

$(PEERS_DIR)/%/.installed:
	$(PYTHON) -m venv $(PEERS_DIR)/$*
	$(PEERS_DIR)/$*/bin/python -m pip install -q --upgrade pip
	$(PEERS_DIR)/$*/bin/python -m pip install -q $(PEERS_PKG_$*)
	@touch $@

PEERS_PKG_sglang  := 'sglang-router==0.3.2'
PEERS_PKG_litellm := 'litellm[proxy]>=1.108,<1.111'
PEERS_PKG_aiperf  := 'aiperf==0.13.0'

peers-setup: $(PEERS_DIR)/sglang/.installed $(PEERS_DIR)/litellm/.installed $(PEERS_DIR)/aiperf/.installed

bench-peers: $(STAMP) peers-setup
	FEDGATE_PEERS_DIR=$(PEERS_DIR) $(BIN)/python -m bench.peers $(PEERS_ARGS)
