# `make demo` and `make test` each do all the set-up first (virtual environment, install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench bench-deps experiments check-claims clean

demo: $(STAMP)
	$(BIN)/longshort demo

# Two test processes at once (pytest-xdist): most of the suite's time is single-threaded (subprocesses
# importing torch, Inductor compiling), so two workers on two cores take about 2/3 of the time of one.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

install: $(STAMP)

# The experiments at full size (minutes each), and the slow check of their README claims (not in CI).
experiments: $(STAMP)
	for name in $$($(BIN)/longshort experiment --list | cut -d' ' -f1); do $(BIN)/longshort experiment $$name || exit 1; done

check-claims: $(STAMP)
	$(BIN)/python -m pytest -m slow

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
