# plants-mlops: the two commands are `make demo` and `make test` (see README.md).
# Each creates the virtual environment on first use; nothing else needs installing by hand.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := true
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_AUTO_OPEN_DASHBOARD := false
export PYTHONUNBUFFERED := 1

.PHONY: install demo test lint bench clean-data help

help:
	@echo "make demo   - set up .venv if needed, run the whole flow end to end on the local default"
	@echo "make test   - set up .venv if needed, start the test servers, run ruff and pytest"
	@echo "make bench  - run the benchmarks under benchmarks/"

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the virtual environment in $(VENV) (~5 min: torch, ZenML, MLflow, Kedro)..."
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned (==2.14.1 / ==0.29.1); constraints.txt pins the rest.
	@$(BIN)/python -m pip install -c constraints.txt -e '.[dev]' \
		| grep --line-buffered -E '^(Collecting|Successfully installed)' \
		| awk '/^Collecting/ {n++; if (n % 25 == 0) {print "  " n " packages collected..."; fflush()}} /^Successfully/ {print "  installed"; fflush()}'; \
		test $${PIPESTATUS[0]} -eq 0
	@# `zenml` commands in a shell that sourced .venv/bin/activate use this project's ZenML
	@# store, as every plants-mlops command does (docs/zenml.md).
	@grep -q ZENML_CONFIG_PATH $(BIN)/activate || \
		echo 'export ZENML_CONFIG_PATH="$(CURDIR)/data/zenml"' >> $(BIN)/activate
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/plants-mlops demo

test: $(STAMP)
	bash scripts/test-prereqs.sh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --cov=plants_mlops --cov-report=term $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	@# bench_model_cv.py trains every candidate k times (an hour or more on 2 CPU cores):
	@# run it on its own (docs/model.md gives the command). bench_trust.py measures the
	@# registered champion on the project's data: run it after `make demo`.
	@for b in benchmarks/bench_*.py; do case $$b in *bench_model_cv.py|*bench_trust.py) continue;; esac; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-data:
	find data -mindepth 2 ! -name .gitkeep -delete 2>/dev/null || true
	rm -f data/*.db
	rm -rf mlruns mlartifacts
