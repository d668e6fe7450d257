# ampflow: every target installs what it needs by itself (see README).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# an editable install writes ampflow.egg-info into the source tree: `make test` installs two venvs at
# once, so their editable installs take turns
EDITABLE_LOCK := flock $(CURDIR)/.editable-install.lock
export PYTHONHASHSEED := 0
# the demo's MLflow store (an embedded SQLite database under the working directory)
MLFLOW_DB ?= $(CURDIR)/mlruns.db
DEMO_OUT ?= $(CURDIR)/demo-out

.PHONY: setup test test-main demo bench lint format compile images e2e-cluster mlflow-ui clean airflow-venv test-airflow mutation gpu-check bench-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "ampflow needs $(PY) on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "installing ampflow and its dependencies into $(VENV) (first time: a few minutes)"
	# torch first and pinned, so that nothing later pulls a newer CUDA build
	$(PIP) install "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
	$(EDITABLE_LOCK) $(PIP) install -e ".[train,tracking,kube,kfp,dev]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import torch, mlflow, kfp, ampflow; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

# the main suite and, beside it, the Airflow DAG tests in their own venv (see airflow-venv). The two
# venvs install at the same time (on a fresh machine that saves the Airflow venv's minutes); the
# Airflow suite starts once both are there, because its DAGs run steps through the main venv's
# `ampflow`. The main suite runs on TEST_WORKERS pytest-xdist workers (a test file's tests stay on one
# worker: they share module fixtures), the Airflow suite on AIRFLOW_TEST_WORKERS; tests pin torch to
# one thread and wait on servers and subprocesses a good part of the time, so three workers keep a
# 2-core machine busy. The main suite's progress shows on the terminal; the Airflow side's output
# (install and tests) goes to .test-airflow.log and is printed whole when both are done. Either
# failing fails the target.
TEST_WORKERS ?= 2
AIRFLOW_TEST_WORKERS ?= 1
# --durations: the slowest tests are named at the end of every run, so a slow newcomer shows up
XDIST = -n $(TEST_WORKERS) --dist loadfile --durations=15
test:
	@rm -f .test-setup.rc; \
	{ $(MAKE) --no-print-directory airflow-venv && \
	  until [ -e .test-setup.rc ]; do sleep 2; done && test "$$(cat .test-setup.rc)" = 0 && \
	  $(MAKE) --no-print-directory test-airflow; } > .test-airflow.log 2>&1 & airflow=$$!; \
	$(MAKE) --no-print-directory setup; rc=$$?; echo $$rc > .test-setup.rc; \
	if [ $$rc -ne 0 ]; then wait $$airflow; cat .test-airflow.log; rm -f .test-setup.rc; exit $$rc; fi; \
	echo "main suite (the Airflow suite runs beside it, output in .test-airflow.log)"; \
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS); main=$$?; \
	wait $$airflow; air=$$?; rm -f .test-setup.rc; \
	echo; echo "== Airflow suite (tests/airflow):"; cat .test-airflow.log; \
	echo "main suite exit $$main, Airflow suite exit $$air"; test $$main -eq 0 -a $$air -eq 0

test-main: setup
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# mutation testing of the decision code (pyproject's [tool.mutmut]: comparability, verdict, noise,
# regression, stats) against the fast pure tests; not part of make test. mutmut works in ./mutants
# and resumes there; the last line is the score (killed / all mutants), which must be at least 90 %.
MUTATION_MIN ?= 90
mutation: setup
	$(BIN)/mutmut run --max-children $${MUTATION_CHILDREN:-2} >/dev/null || true
	@$(BIN)/mutmut results
	@$(BIN)/mutmut export-cicd-stats >/dev/null
	@$(BIN)/python -c "import json, sys; s = json.load(open('mutants/mutmut-cicd-stats.json')); \
	  score = 100 * (s['killed'] + s['timeout']) / max(1, s['total']); \
	  print(f\"mutation score: {s['killed'] + s['timeout']}/{s['total']} killed = {score:.1f} % (minimum $(MUTATION_MIN) %)\"); \
	  sys.exit(0 if score >= $(MUTATION_MIN) else 1)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: setup
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(MLFLOW_DB)} \
	  $(BIN)/ampflow bench --recipe tweets-bow --precisions 32-true,bf16-mixed --compile off \
	  --out $(DEMO_OUT)
	@echo
	@echo "Open the MLflow UI on these runs:  make mlflow-ui   (then http://127.0.0.1:5000)"

mlflow-ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_DB) \
	  --host 127.0.0.1 --port 5000 --workers 1

# Airflow gets its own venv: the cncf-kubernetes provider needs kubernetes>=36, kfp pins <31.
# Airflow's constraints file is not reachable offline, so the few pins that matter are spelled out here.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_PINS := "apache-airflow==3.3.2" "apache-airflow-providers-cncf-kubernetes==10.25.0" "pytest>=8" "pytest-timeout>=2.3" "pytest-xdist==3.8.0"
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-$(shell echo '$(AIRFLOW_PINS)' | cat - pyproject.toml | sha256sum | cut -c1-12)

airflow-venv: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "ampflow needs $(PY) on PATH"; exit 1; }
	@test -x $(AIRFLOW_VENV)/bin/python || $(PY) -m venv $(AIRFLOW_VENV)
	@echo "installing Airflow 3.3.2 into $(AIRFLOW_VENV) (first time: a few minutes)"
	$(AIRFLOW_VENV)/bin/python -m pip --disable-pip-version-check -q install $(AIRFLOW_PINS) 2>&1 | grep -v "^WARNING: Location" || true
	# ampflow's torch-free core and the airflow_ampflow operator package: the DAGs run steps through
	# the main venv's `ampflow`, never torch in the scheduler
	$(EDITABLE_LOCK) $(AIRFLOW_VENV)/bin/python -m pip --disable-pip-version-check -q install -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(AIRFLOW_VENV)/bin/python -c "import airflow, kubernetes, ampflow.commands, airflow_ampflow.operator; from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator; assert airflow.__version__ == '3.3.2', airflow.__version__; assert int(kubernetes.__version__.split('.')[0]) >= 36, kubernetes.__version__"
	@rm -f $(AIRFLOW_VENV)/.installed-* && touch $(AIRFLOW_STAMP)

test-airflow: airflow-venv setup
	$(AIRFLOW_VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(AIRFLOW_TEST_WORKERS) --dist loadfile --durations=10 tests/airflow $(PYTEST_ARGS)

# bench_peers' peers (Lightning Fabric, Accelerate) in a venv of their own, beside the same torch and
# an editable ampflow: never in ampflow's dependencies
BENCH_VENV := .venv-bench
BENCH_PINS := "lightning==2.6.6" "accelerate==1.15.0" "transformers==5.24.0"
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell echo '$(BENCH_PINS)' | cat - pyproject.toml | sha256sum | cut -c1-12)
BENCH_PIP := $(BENCH_VENV)/bin/python -m pip --disable-pip-version-check -q

bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "ampflow needs $(PY) on PATH"; exit 1; }
	@test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	@echo "installing the benchmark peers into $(BENCH_VENV) (first time: a few minutes)"
	# torch first and pinned, so that the peers' requirements cannot move it
	$(BENCH_PIP) install "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
	$(BENCH_PIP) install $(BENCH_PINS) 2>&1 | grep -v "^WARNING: Location" || true
	$(BENCH_PIP) install -e ".[train]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(BENCH_VENV)/bin/python -c "import torch, lightning, accelerate, transformers, ampflow.engine.trainer; \
	  got = (torch.__version__[:6], lightning.__version__, accelerate.__version__, transformers.__version__); \
	  assert got == ('2.13.0', '2.6.6', '1.15.0', '5.24.0'), got"
	@rm -f $(BENCH_VENV)/.installed-* && touch $(BENCH_STAMP)

bench: setup bench-venv
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

# the GPU readiness check (README, "GPU check"): environment, CUDA checks, every precision on
# tweets-minilm at 256 tokens, report in $(GPU_CHECK_OUT)/; exit 2 on a machine without CUDA.
# torchao (fp8) is installed here only: it matters only on a GPU with compute capability 8.9+.
GPU_CHECK_OUT ?= $(CURDIR)/gpu-check
gpu-check: setup
	@$(BIN)/python -c "import sys, torch; c = torch.cuda.is_available() and torch.cuda.get_device_capability(); \
	  sys.exit(0 if c and c >= (8, 9) else 1)" && ! $(BIN)/python -c "import torchao" 2>/dev/null && \
	  { $(PIP) install -e ".[fp8]" 2>&1 | grep -v "^WARNING: Location"; } || true
	timeout 600 $(BIN)/ampflow doctor --gpu --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

# opt-in: `ampflow launch` against a real cluster (kind + the Kubeflow operators: README, section kube)
e2e-cluster: setup
	@kc="$${KUBECONFIG:-$$HOME/.kube/config}"; if [ ! -f "$${kc%%:*}" ]; then \
	  echo "make e2e-cluster: no kubeconfig at $$kc; skipped (README, section kube, sets up a kind cluster)"; \
	  exit 0; fi; \
	KUBECONFIG="$$kc" $(BIN)/python -m pytest -q -m cluster tests/test_e2e_cluster.py $(PYTEST_ARGS)

# KFP: compile the pipelines into pipelines/compiled/*.yaml (committed; a test fails when they are stale)
compile: setup
	$(BIN)/python -m pipelines.compile

# training images; needs a running docker engine (lint with hadolint works without one)
IMAGE_TAG ?= 0.1.0
images: setup
	$(BIN)/hadolint images/Dockerfile.cuda images/Dockerfile.cpu
	@if ! docker info >/dev/null 2>&1; then \
	  echo "make images: no docker engine reachable here; skipped the build (Dockerfiles linted)"; exit 0; fi; \
	docker build -f images/Dockerfile.cuda -t ghcr.io/ampflow/ampflow-train:$(IMAGE_TAG)-cuda12.8 . && \
	docker build -f images/Dockerfile.cpu -t ghcr.io/ampflow/ampflow-cpu:$(IMAGE_TAG) .

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build dist *.egg-info
