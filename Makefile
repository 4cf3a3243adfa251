# Two commands on a fresh clone; each sets up whatever is missing first, and is quick when nothing is.
#   make pipeline    the whole notebook pipeline on the Animals data (reports in reports/)
#   make test        lint, formatting and type checks, then the test suite
# DATA=path/to/folder points both at another data set.
DATA ?= ../shared/datasets/animals
VENV := .venv/bin

.PHONY: pipeline test lint setup

pipeline: setup
	$(VENV)/python run_pipeline.py --data-dir $(DATA)

test: setup lint
	CLASSIFIER_DATA_DIR=$(DATA) $(VENV)/python -m pytest

# What pre-commit runs too: lint, formatting and types of the library.
lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

setup: .venv/.installed

# Re-run only when the set-up script or the project's dependencies change.
.venv/.installed: setup.sh pyproject.toml
	bash setup.sh
	touch $@
