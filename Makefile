# Two commands: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean-workspace

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "entroflow needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/entroflow run configs/default.yaml

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/bench_vs_trl.py
	$(PY) benchmarks/bench_rollout.py
	$(PY) benchmarks/bench_rl_step.py
	$(PY) benchmarks/bench_pipeline.py

clean-workspace:
	rm -rf artifacts/store artifacts/prefect artifacts/mlflow.db artifacts/mlflow-artifacts artifacts/reports
