# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck docs pytest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.demo

test: $(STAMP)
	$(BIN)/ruff check djobs tests examples
	$(BIN)/mypy djobs
	$(BIN)/pytest -q
	$(BIN)/mkdocs build --strict --quiet --site-dir .site

lint: $(STAMP)
	$(BIN)/ruff check djobs tests examples

typecheck: $(STAMP)
	$(BIN)/mypy djobs

pytest: $(STAMP)
	$(BIN)/pytest -q

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site

clean:
	rm -rf $(VENV) .site .mypy_cache .pytest_cache .ruff_cache djobs-demo.db*
