# reid-tf: `make run` (set up + main job on the embedded dataset), `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is only used to read PyTorch checkpoints (reid_tf.convert). The CPU wheel 2.13.0 is
# what this project's machines carry locally; elsewhere use the PyTorch CPU index.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: run test setup setup-test benchmarks clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e ".[cpu]"
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[cpu,test,torch,onnx,faiss,litert]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(PY) -u solution.py

test: $(VENV)/.installed-test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --durations=20 $(PYTEST_ARGS)

benchmarks: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
