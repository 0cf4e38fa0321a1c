# recsys: `make run` serves the demo, `make test` runs every test, `make bench` runs the benchmarks.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test bench lint services-up services-down clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create the virtualenv and install everything

run: $(STAMP)  ## start Postgres/Redis if needed, migrate, load the demo, train, serve API + admin + worker + beat
	$(BIN)/python manage.py runstack

test: $(STAMP)  ## the whole test suite on real Postgres, Redis and a Celery worker (plus lint and migration checks)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_SETTINGS_MODULE=recsys.settings.test $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest

bench: $(STAMP)  ## every benchmark in bench/, each printing a table
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

services-up: $(STAMP)  ## start the local Postgres and Redis (under var/)
	$(BIN)/python -m recsys.localservices up

services-down: $(STAMP)  ## stop the local Postgres and Redis
	$(BIN)/python -m recsys.localservices down

clean: services-down  ## stop the local servers and delete var/ (database, Redis data, artifacts)
	rm -rf var
