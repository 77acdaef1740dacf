# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

# Re-install only when the project's dependencies change: `make setup` is idempotent and cheap.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/lra data prepare listops --preset smoke
	$(BIN)/lra run --model transformer --task listops --preset smoke
	$(BIN)/lra report

test: setup
	$(BIN)/python -m pytest -p no:cacheprovider --durations=15 tests

clean:
	rm -rf $(VENV) *.egg-info
