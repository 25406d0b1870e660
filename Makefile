# Two commands: `make serve` and `make test`. torch is installed before the project so that pip
# takes the CPU build (2.13.0) rather than resolving a multi-GB CUDA build from the bare requirement.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
PY := $(VENV)/bin/python

.PHONY: serve test install migrate bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) -m app.cli migrate

serve: migrate
	$(PY) -m app.cli serve --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/upload.py

clean:
	rm -rf $(VENV) data .pytest_cache
