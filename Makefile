# Two commands: `make serve` and `make test`.
# torch is installed before the project so that pip takes a build that lies on disk rather than resolving
# a multi-GB download from the bare requirement. The server venv gets the CPU build (2.13.0) and no
# torchvision; the test venv gets torch 2.14.1 with torchvision 0.29.1 (test-only model zoo).
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
SERVE_TORCH ?= torch==2.13.0
TEST_TORCH ?= torch==2.14.1 torchvision==0.29.1
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test install install-test migrate bench clean

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $(SERVE_TORCH)
	$(VENV)/bin/python -m pip install -q -e . -e ./client
	touch $@

$(TEST_VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q $(TEST_TORCH)
	$(TEST_VENV)/bin/python -m pip install -q -e '.[test]' -e ./client
	touch $@

install: $(VENV)/.installed
install-test: $(TEST_VENV)/.installed

migrate: install
	$(VENV)/bin/python -m app.cli migrate

serve: migrate
	$(VENV)/bin/python -m app.cli serve --host $(HOST) --port $(PORT)

test: install-test
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(TEST_VENV)/bin/python bench/upload.py

clean:
	rm -rf $(VENV) $(TEST_VENV) data .pytest_cache
