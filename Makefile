# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install services-up services-down demo test test-unit lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

services-up: install
	ops/tools/install
	RIG_PYTHON=$(BIN)/python ops/redis/up
	RIG_PYTHON=$(BIN)/python ops/kafka/up
	ops/postgres/up

services-down:
	-ops/kafka/down
	-ops/postgres/down
	-ops/redis/down

demo: services-up
	$(BIN)/rig demo

# Starts the services, runs every test, stops the services, and keeps pytest's exit code.
test: services-up
	rc=0; $(BIN)/pytest -ra $(PYTEST_ARGS) || rc=$$?; $(MAKE) --no-print-directory services-down; exit $$rc

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check rig streams tests bench ops
	$(BIN)/ruff format --check rig streams tests bench ops

clean: services-down
	rm -rf .rig ops/kafka/state ops/redis/state ops/feast/data
