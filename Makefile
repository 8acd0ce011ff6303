# The two commands of the README. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed: what the server needs; then the dev extra (tests, benchmarks, lint).
SERVING := $(VENV)/.installed-serving
STAMP := $(VENV)/.installed

.PHONY: serve test docs lint bench browser promtool image image-check gpu-bundle gpu-check
# `serve run` on a Ray whose node address is 127.0.0.1, with the settings every node needs
# (serve_app/local.py; serve_app/config/node.py, NODE_SETTINGS).
serve: $(SERVING)  ## the server with the packaged voice on http://127.0.0.1:8000
	$(BIN)/python -m serve_app.local deploy/serve_config.yaml

# Every test behind the default front door (HAProxy mode), then the promises marked
# `front_door` behind the other, Serve's proxy (docs/operations.md, "The front door").
OTHER_FRONT_DOOR := RAY_SERVE_ENABLE_HA_PROXY=0
test: $(STAMP) browser promtool  ## lint and the layers, then every test (the cluster tests start a Ray cluster of their own)
	$(BIN)/ruff check .
	$(BIN)/lint-imports  # the layers (pyproject.toml, [tool.importlinter])
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest tests/cluster
	$(OTHER_FRONT_DOOR) $(BIN)/python -m pytest -m front_door tests/integration
	$(OTHER_FRONT_DOOR) $(BIN)/python -m pytest -m front_door tests/cluster

docs: $(STAMP)  ## the manual (docs/) as a site, into site/ (MkDocs, strict: no broken link)
	$(BIN)/python -m serve_app.config.reference --write docs/configuration.md
	$(BIN)/mkdocs build --strict

bench: $(STAMP)  ## the comparison with peers, then engine, encoders, serving layer, server, streaming, playback stalls, admission, a burst at cold start, scale-out
	$(BIN)/python -m load_tests.compare
	$(BIN)/python -m load_tests.bench_engine
	$(BIN)/python -m load_tests.bench_encoders
	$(BIN)/python -m load_tests.bench_serving
	$(BIN)/python -m load_tests.bench_server
	$(BIN)/python -m load_tests.bench_streaming
	$(BIN)/python -m load_tests.bench_playback
	$(BIN)/python -m load_tests.bench_admission
	$(BIN)/python -m load_tests.bench_burst
	$(BIN)/python -m load_tests.bench_scale_out

IMAGE ?= chorus:0.1.0
BASE ?= rayproject/ray:2.60.0-py311-gpu
image:  ## docker build -f deploy/Dockerfile (BASE=, IMAGE=; docker build's own --build-arg for PIP_INDEX_URL etc.)
	docker build --build-arg BASE=$(BASE) -f deploy/Dockerfile -t $(IMAGE) .

# Debian's docker.io and debootstrap as root where missing, dockerd started where it is not
# running; then tests/image (skipped, with the reason, where Docker cannot run).
image-check: $(STAMP)  ## build the image (on a local stand-in base unless CHORUS_IMAGE_BASE is set), run it, check it serves speech (~10 min)
	@command -v docker >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq docker.io debootstrap >/dev/null; } || true
	@docker info >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v dockerd >/dev/null && \
	  { dockerd >/tmp/chorus-dockerd.log 2>&1 & sleep 5; }; } || true
	$(BIN)/python -m pytest -s tests/image

gpu-bundle: $(SERVING)  ## the offline bundle for a GPU host without a package index: .offline/, parts <= 60 MiB
	$(BIN)/python -m load_tests.offline_bundle

gpu-check:  ## on a GPU host: unpack .offline/, pytest tests/gpu, bench_gpu, bench_server_gpu (skips without CUDA)
	bash load_tests/gpu_host.sh

browser:  ## Debian's Chromium, for the playground's browser test (which skips without it)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "No Chromium could be installed: the browser test will be skipped."

promtool: $(SERVING)  ## Prometheus's promtool (from Debian's package, not installed), for the alert rules' test
	@command -v promtool >/dev/null 2>&1 || [ -x $(BIN)/promtool ] || { \
	  d=$$(mktemp -d) && cd $$d && chmod 755 $$d && \
	  { apt-get download prometheus >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } && \
	  dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool && \
	  mv usr/bin/promtool $(CURDIR)/$(BIN)/promtool; rm -rf $$d; } || \
	  echo "No promtool could be had: the alert rules' test will be skipped."

$(SERVING): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(STAMP): $(SERVING)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@
