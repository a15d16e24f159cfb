# Stable entry points. Everything runs from a fresh clone: the venv and the cluster binaries are made when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Which interpreter PYTHON is now: the venv is made again, from scratch, when it changes.
PYTHON_ID := $(shell $(PYTHON) -c 'import sys; print(sys.executable + " " + sys.version.split()[0])' 2>/dev/null)

.PHONY: help venv test unit e2e lint demo cluster-up cluster-down binaries crds manifests image clean FORCE
.DEFAULT_GOAL := help

## help: this list (each target's `## name:` line)
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

# Rewritten (so newer than the stamp) only when PYTHON_ID differs from the one the venv was made with.
$(VENV)/.python: FORCE
	@[ -z "$(PYTHON_ID)" ] || [ "$$(cat $@ 2>/dev/null)" = "$(PYTHON_ID)" ] || { mkdir -p $(VENV); echo "$(PYTHON_ID)" >$@; }

$(STAMP): pyproject.toml $(VENV)/.python
	@[ -n "$(PYTHON_ID)" ] || { echo "error: no $(PYTHON) found; need Python 3.11+: make PYTHON=python3.12 ..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(PYTHON) is Python $(lastword $(PYTHON_ID)); need 3.11+: make PYTHON=python3.12 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(if $(filter $(VENV)/.python,$?),--clear) $(VENV)
	echo "$(PYTHON_ID)" >$(VENV)/.python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## venv: make .venv (Python 3.11+; make PYTHON=python3.12 ... picks the interpreter) and install the package
venv: $(STAMP)

## test: lint, unit tests and the end-to-end suite (builds the cluster binaries when missing)
test: $(STAMP) lint binaries
	$(PY) -m pytest -q tests e2e

## unit: the unit tests alone (tests/)
unit: $(STAMP)
	$(PY) -m pytest -q tests

## e2e: the end-to-end suite; with E2E_KUBECONFIG=PATH against that cluster instead of a local one (README)
e2e: $(STAMP) binaries
	$(PY) -m pytest -q e2e

## lint: ruff and mypy
lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests e2e hack
	$(VENV)/bin/mypy

## binaries: build the local cluster's binaries into ~/.cache/gpu-operator-e2e when missing (e2e/cluster/build.sh)
binaries:
	bash e2e/cluster/build.sh

## cluster-up: start the local cluster (no nodes) and leave it running; prints its KUBECONFIG
cluster-up: $(STAMP) binaries
	$(PY) -m e2e.cluster up

## cluster-down: stop the demo's operator and node simulator and the local cluster, and remove .e2e-state
cluster-down: $(STAMP)
	$(PY) -m e2e.demo stop
	$(PY) -m e2e.cluster down

## demo: local cluster, fake GPU nodes, the operator converging to ready; all left running (make cluster-down)
demo: $(STAMP) binaries
	$(PY) -m e2e.demo

## crds, manifests: regenerate the CRDs from the model, then the chart's copy and the plain install manifest
crds: $(STAMP)
	$(VENV)/bin/gpu-operator crds --dir crds
	$(MAKE) manifests

manifests: $(STAMP) binaries
	$(PY) hack/gen-manifests.py

## image: the operator image as an OCI archive, dist/gpu-operator-image.tar, with no container engine (needs root)
# (the Debian base is cached in ~/.cache/gpu-operator-e2e/image)
image: $(STAMP)
	PYTHON=$(PY) bash hack/build-image.sh

# The demo and the cluster are stopped first: removing .e2e-state under them would leave them running, out of
# reach of make cluster-down. Without the venv (none is made here) .e2e-state is kept while it records them.
## clean: stop the demo and the local cluster if they run, then remove .venv, .e2e-state and dist
clean:
	@if [ ! -d .e2e-state ]; then :; \
	elif [ -x $(PY) ]; then set -x; $(PY) -m e2e.demo stop && $(PY) -m e2e.cluster down && rm -rf .e2e-state; \
	elif [ -e .e2e-state/cluster.json ] || [ -e .e2e-state/demo.json ]; then \
	  echo "make clean: kept .e2e-state: with no $(PY) the local cluster and demo it records are not stopped" \
	    "(if they run); make cluster-down makes the venv and stops them" >&2; \
	else set -x; rm -rf .e2e-state; fi
	rm -rf $(VENV) dist
