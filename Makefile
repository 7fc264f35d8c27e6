# The two commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MT_VOLUME ?= $(CURDIR)/var/volume

.PHONY: setup demo test lint bench-audit clean

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	mkdir -p $(MT_VOLUME)
	$(BIN)/mt-assets audit --profile multitalk-480p --volume $(MT_VOLUME) || test $$? -eq 1

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

bench-audit: setup
	$(BIN)/python benchmarks/audit.py

clean:
	rm -rf $(VENV) var
