# `make demo` and `make test` each do all the set-up first (virtual environment, install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench bench-deps clean

demo: $(STAMP)
	$(BIN)/longshort demo

test: $(STAMP)
	$(BIN)/python -m pytest

install: $(STAMP)

# Benchmarks: a script, not a test (see benchmarks/RESULTS.md). jax is a benchmark-only extra.
bench-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'

bench: bench-deps
	$(BIN)/python benchmarks/rnn_speed.py
	$(BIN)/python benchmarks/rnn_speed.py --memory
	$(BIN)/python benchmarks/rnn_speed.py --cells

# torch is pinned to the CPU wheel by constraints.txt; pyproject.toml keeps a range for users elsewhere.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs
