# Two commands on a fresh machine (Python 3.11+ with venv):
#   make demo   set up, then run the 10,000-order demo on the embedded NATS server
#   make test   set up, then lint (ruff check and format, mypy), build the docs (strict) and run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint docs setup clean

# constraints.txt: the exact nats-py and wasmtime the README's figures were measured with (the package accepts a range).
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'  # test pulls in build, otlp, loadtest, baseline, component, docs
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/ebbtide demo --orders 10000

test: setup lint docs
	$(BIN)/pytest -q -rs  # -rs: each skipped test with its reason (the README names what may skip)

lint: setup
	$(BIN)/ruff check platform tests loadtest
	$(BIN)/ruff format --check platform tests loadtest
	$(BIN)/mypy

# The documentation site (mkdocs.yml): built strict into a temporary folder, so a broken link, a missing page or
# an API name that no longer resolves fails `make test`. `$(BIN)/mkdocs serve` to read it.
docs: setup
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir "$$site"; status=$$?; rm -rf "$$site"; exit $$status

clean:
	rm -rf build .ebbtide
