# ifv: every target creates the virtual environment at .venv on first use and reuses it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ifv-installed
PYTHON ?= python3

.PHONY: install demo test lint bench collect figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install            ## the default experiment on the offline model (trains it once)
	$(VENV)/bin/ifv run

test: install            ## lint, then the test suite
	$(VENV)/bin/ruff check ifv experiments tests benchmarks
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check ifv experiments tests benchmarks

collect: install         ## gather the runs in outputs/ and multirun/ into results/
	$(PY) -m experiments.collect

figures: install         ## the paper's figures, Table 1 and figures/REPORT.md from results/
	$(PY) -m experiments.figures
	$(PY) -m experiments.report

bench: install           ## speed of the Jacobian methods, as ratios to the default
	$(PY) benchmarks/bench_jacobian.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
