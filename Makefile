# The two commands: `make demo` and `make test`. Both set up .venv on first use.
# `make test-fast` leaves out the tests that start servers and the slowest end-to-end ones (pytest
# markers `servers` and `slow`, see mt_assets_tests/conftest.py): a few minutes, not the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MT_VOLUME ?= $(CURDIR)/var/volume
# The demo (and `make ui` on its instance) runs the tiny profile with its FusionX LoRA twin.
export MT_PROFILE ?= tiny-fusionx
# The demo's source: the tiny profile's mirror, built locally on first use (nothing downloaded).
export MT_SOURCE ?= $(CURDIR)/var/tiny-mirror

export DAGSTER_HOME ?= $(CURDIR)/var/dagster

.PHONY: setup browser demo ui serve test test-fast lint bench-audit bench-provision clean

setup: $(STAMP) browser

# Headless Chromium for the UI test: installed with apt where we are root; elsewhere that
# test is skipped and says why (in CI it must run).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed and this is not root: the browser test will be skipped"; fi; }

$(STAMP): setup.py pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	mkdir -p $(MT_VOLUME) $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m mt_assets.defs.demo

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m 'not servers and not slow'

# The Dagster UI on http://127.0.0.1:3000 with the demo's instance; Ctrl-C stops all of it.
ui: setup
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	env --default-signal=INT,TERM $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The production control plane (README "Deploy"): dagster-webserver and dagster-daemon as two processes
# on Postgres (DAGSTER_PG_URL, required), with DAGSTER_HOME=$(SERVE_HOME); Ctrl-C stops both.
SERVE_HOME ?= $(CURDIR)/var/serve
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 3000
serve: $(STAMP)
	mkdir -p $(MT_VOLUME)
	$(BIN)/python -m mt_assets.deploy --home $(SERVE_HOME) --host $(SERVE_HOST) --port $(SERVE_PORT)

bench-audit: setup
	$(BIN)/python benchmarks/audit.py

bench-provision: setup
	$(BIN)/python benchmarks/provision.py

clean:
	rm -rf $(VENV) var
