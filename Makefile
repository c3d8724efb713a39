# Two commands on a fresh machine (Python 3.11+ with venv):
#   make demo   set up, then run the 10,000-order demo on the embedded NATS server
#   make test   set up, then lint (ruff check and format, mypy) and run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint setup clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'  # test pulls in build, otlp, loadtest, baseline
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/ebbtide demo --orders 10000

test: setup lint
	$(BIN)/pytest -q -rs  # -rs: each skipped test with its reason (the README names what may skip)

lint: setup
	$(BIN)/ruff check platform tests loadtest
	$(BIN)/ruff format --check platform tests loadtest
	$(BIN)/mypy

clean:
	rm -rf build .ebbtide
