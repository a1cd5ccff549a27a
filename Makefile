# The two commands from the README: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_CAPTURE_PRINTS := false
export ZENML_LOGGING_VERBOSITY := WARN

.PHONY: setup demo test bench bench-setup up down status logs env lock

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	./scripts/setup.sh
	touch $@

demo: setup
	$(PY) -m emulators demo

test: setup
	$(PY) -m pytest

bench: bench-setup
	$(PY) -m bench.real_accuracy
	$(PY) -m bench.training
	$(PY) -m bench.decisions
	$(PY) -m bench.forecast

# Benchmark-only packages, pinned here and constrained by the lock: never in a function or the trainer image.
bench-setup: setup
	$(VENV)/bin/uv pip install --quiet --python $(PY) -c requirements.lock 'rdata==1.1.0'

up: setup
	$(PY) -m emulators up
down:
	$(PY) -m emulators down
status:
	$(PY) -m emulators status
logs:
	$(PY) -m emulators logs
env:
	@$(PY) -m emulators env

lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock
