# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install services-up demo-services services-down demo test test-unit lint bench clean

install: $(VENV)/.installed

# Reinstalled when a C extension changes too: an editable install builds them in place, once.
$(VENV)/.installed: pyproject.toml $(wildcard rig/*/*.c)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# What the tests use: Kafka, Redis, PostgreSQL and kcat. A service that cannot start stops the others
# this command started, and says what to do.
services-up: install
	ops/tools/install
	RIG_PYTHON=$(BIN)/python ops/services up redis kafka postgres

# What the demo uses: Kafka and Redis (its metadata store is SQLite), PostgreSQL only when
# RIG_METADATA_URL points at it.
demo-services: install
	RIG_PYTHON=$(BIN)/python ops/services up redis kafka $(if $(findstring postgresql,$(RIG_METADATA_URL)),postgres)

services-down:
	ops/services down

demo: demo-services
	$(BIN)/rig-sim demo

# Starts the services, runs every test, stops the services, and keeps pytest's exit code.
test: services-up
	rc=0; $(BIN)/pytest -ra $(PYTEST_ARGS) || rc=$$?; $(MAKE) --no-print-directory services-down; exit $$rc

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check rig streams sim tests bench ops
	$(BIN)/ruff format --check rig streams sim tests bench ops
	$(BIN)/lint-imports
	$(BIN)/mypy

clean: services-down
	rm -rf .rig ops/kafka/state ops/redis/state examples/synthetic_world/data
