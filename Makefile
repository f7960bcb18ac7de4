# `make demo` and `make test` each do all the set-up first (virtual environment, install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

demo: $(STAMP)
	$(BIN)/longshort demo

test: $(STAMP)
	$(BIN)/python -m pytest

install: $(STAMP)

# torch is pinned to the CPU wheel by constraints.txt; pyproject.toml keeps a range for users elsewhere.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs
