# The two commands of the README. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed: what the server needs; then the dev extra (tests, benchmarks, lint).
SERVING := $(VENV)/.installed-serving
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench browser gpu-bundle gpu-check
# RAY_max_direct_call_object_size: a sentence's audio (up to ~45 s) returns inline, not
# through the object store (README, "Sizing a GPU node"). FORWARDED_ALLOW_IPS="": Serve's
# HTTP proxy believes no X-Forwarded-For; Chorus's trusted_proxies decides (README, Security).
serve: $(SERVING)  ## the server with the packaged voice on http://127.0.0.1:8000
	RAY_max_direct_call_object_size=4000000 FORWARDED_ALLOW_IPS= $(BIN)/serve run deploy/serve_config.yaml

test: $(STAMP) browser  ## lint, then every test (the cluster tests start a Ray cluster of their own)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest tests/cluster

bench: $(STAMP)  ## the comparison with peers, then engine, encoders, serving layer, server, streaming, admission, scale-out
	$(BIN)/python -m load_tests.compare
	$(BIN)/python -m load_tests.bench_engine
	$(BIN)/python -m load_tests.bench_encoders
	$(BIN)/python -m load_tests.bench_serving
	$(BIN)/python -m load_tests.bench_server
	$(BIN)/python -m load_tests.bench_streaming
	$(BIN)/python -m load_tests.bench_admission
	$(BIN)/python -m load_tests.bench_scale_out

gpu-bundle: $(SERVING)  ## the offline bundle for a GPU host without a package index: .offline/, parts <= 60 MiB
	$(BIN)/python -m load_tests.offline_bundle

gpu-check:  ## on a GPU host: unpack .offline/, pytest tests/gpu, bench_gpu, bench_server_gpu (skips without CUDA)
	bash load_tests/gpu_host.sh

browser:  ## Debian's Chromium, for the playground's browser test (which skips without it)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "No Chromium could be installed: the browser test will be skipped."

$(SERVING): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(STAMP): $(SERVING)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@
