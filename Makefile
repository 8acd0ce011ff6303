# The two commands of the README. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench
serve: $(STAMP)  ## the server with the packaged voice on http://127.0.0.1:8000
	$(BIN)/serve run deploy/serve_config.yaml

test: $(STAMP)  ## lint, then every test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)  ## engine, server, streaming and admission benchmarks (load_tests/)
	$(BIN)/python -m load_tests.bench_engine
	$(BIN)/python -m load_tests.bench_server
	$(BIN)/python -m load_tests.bench_streaming
	$(BIN)/python -m load_tests.bench_admission

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@
