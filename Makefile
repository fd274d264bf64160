# ifv: every target creates the virtual environment at .venv on first use and reuses it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ifv-installed
PYTHON ?= python3

.PHONY: install demo test lint bench collect figures reproduce clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install            ## the default experiment on the offline model (trains it once)
	$(VENV)/bin/ifv run

test: install            ## lint, then the test suite
	$(VENV)/bin/ruff check ifv paper lab tests benchmarks
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile --durations 15

lint: install
	$(VENV)/bin/ruff check ifv paper lab tests benchmarks

collect: install         ## gather the runs in outputs/ and multirun/ into results/
	$(PY) -m paper.collect

figures: install         ## the paper's figures, Table 1 and figures/REPORT.md from results/
	$(PY) -m paper.figures
	$(PY) -m paper.report

# the 25 rows of Supp. S4, the robust experiments and the comparisons, as conf/ defines them
names        = $(sort $(basename $(notdir $(1))))
EXPERIMENTS := $(call names,$(wildcard ifv/conf/experiment/exp*.yaml))
BEYOND      := $(call names,$(wildcard ifv/conf/experiment/*_robust*.yaml))
COMPARISONS := $(call names,$(wildcard ifv/conf/comparison/*.yaml))

reproduce: install       ## the 25 experiments, the robust ones and the comparisons (profile=quick, offline tier), then figures/REPORT.md
	@start=$$(date +%s); failed=""; \
	for e in $(EXPERIMENTS) $(BEYOND); do \
	  echo "== $$e ($$(( ($$(date +%s) - start) / 60 )) min so far)"; \
	  $(VENV)/bin/ifv run experiment=$$e profile=quick tier=offline || failed="$$failed $$e"; \
	done; \
	for c in $(COMPARISONS); do \
	  echo "== compare $$c ($$(( ($$(date +%s) - start) / 60 )) min so far)"; \
	  $(VENV)/bin/ifv compare comparison=$$c profile=quick tier=offline || failed="$$failed $$c"; \
	done; \
	$(PY) -m paper.collect && $(PY) -m paper.figures; \
	$(PY) -m paper.report; \
	echo "reproduce: $$(( ($$(date +%s) - start) / 60 )) min"; \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

bench: install           ## Jacobian methods as ratios to "loop"; the kinks stage against FV; Table 1 on CPU and GPU
	$(PY) benchmarks/bench_jacobian.py
	$(PY) -m benchmarks.bench_kinks
	$(PY) -m benchmarks.table1

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
