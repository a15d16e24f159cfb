# Stable entry points. Everything runs from a fresh clone: the venv and the cluster binaries are made when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test unit e2e lint demo cluster-up cluster-down binaries crds manifests image clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## test: lint, unit tests and the end-to-end suite (builds the cluster binaries when missing)
test: $(STAMP) lint binaries
	$(PY) -m pytest -q tests e2e

unit: $(STAMP)
	$(PY) -m pytest -q tests

## e2e: the end-to-end suite; with E2E_KUBECONFIG=PATH against that cluster instead of a local one (README)
e2e: $(STAMP) binaries
	$(PY) -m pytest -q e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests e2e hack
	$(VENV)/bin/mypy

binaries:
	bash e2e/cluster/build.sh

cluster-up: $(STAMP) binaries
	$(PY) -m e2e.cluster up

cluster-down: $(STAMP)
	$(PY) -m e2e.demo stop
	$(PY) -m e2e.cluster down

demo: $(STAMP) binaries
	$(PY) -m e2e.demo

## crds, manifests: regenerate the CRDs from the model, then the chart's copy and the plain install manifest
crds: $(STAMP)
	$(VENV)/bin/gpu-operator crds --dir crds
	$(MAKE) manifests

manifests: $(STAMP) binaries
	$(PY) hack/gen-manifests.py

## image: the operator image as an OCI image archive, dist/gpu-operator-image.tar, without a container engine
## (needs root; the Debian base is cached in ~/.cache/gpu-operator-e2e/image)
image: $(STAMP)
	PYTHON=$(PY) bash hack/build-image.sh

clean:
	rm -rf $(VENV) .e2e-state dist
