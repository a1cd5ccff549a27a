# The two commands from the README: `make demo` and `make test`. Both set themselves up.
# `make help` lists the targets: the text after `##` on a target's line.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_CAPTURE_PRINTS := false
export ZENML_LOGGING_VERBOSITY := WARN

.PHONY: help setup demo test bench bench-scale bench-setup up down status logs env lock

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | expand -t 14

setup: $(STAMP) ## create .venv with the locked dependencies (and the emulators, Java)

$(STAMP): requirements.lock pyproject.toml
	./scripts/setup.sh
	touch $@

demo: setup ## start the local cloud, upload the sample, follow it through every step
	$(PY) -m emulators demo

test: setup ## run the test suite against the real emulators and a real MLflow
	$(PY) -m pytest

bench: bench-setup ## speed and accuracy benchmarks, beside their targets
	$(PY) -m bench.real_accuracy
	$(PY) -m bench.real_upload
	$(PY) -m bench.training
	$(PY) -m bench.decisions
	$(PY) -m bench.forecast
	$(PY) -m bench.dashboard

bench-scale: setup ## catalogue scale: 1,000 ISBNs end to end, 10,000 decided/monitored/exported (~40 min)
	$(PY) -m bench.scale

# Benchmark-only packages, pinned here and constrained by the lock: never in a function or the trainer image.
bench-setup: setup ## install the benchmark-only packages
	$(VENV)/bin/uv pip install --quiet --python $(PY) -c requirements.lock 'rdata==1.1.0'

up: setup ## start the local cloud (emulators, MLflow, functions, scheduler)
	$(PY) -m emulators up
down: ## stop everything `up` started (training jobs first)
	$(PY) -m emulators down
status: ## which components run, on which ports
	$(PY) -m emulators status
logs: ## the components' logs, one line per event (raw: .venv/bin/python -m emulators logs --raw)
	$(PY) -m emulators logs
env: ## exports for bookcast and stock gcloud: eval "$(make -s env)"
	@$(PY) -m emulators env

lock: ## regenerate requirements.lock from pyproject.toml
	uv pip compile pyproject.toml --extra dev --extra bench --python-version 3.11 -o requirements.lock
