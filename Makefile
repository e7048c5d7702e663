# posewatch — two commands: `make demo` (set up and run the main job) and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint clean

# Idempotent: the venv is (re)built when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,accel]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/posewatch --help

lint: $(STAMP)
	$(BIN)/ruff check detector forecasting pipelines tests bench
	$(BIN)/ruff format --check detector forecasting pipelines tests bench
	$(BIN)/mypy

test: lint
	YOLO_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
