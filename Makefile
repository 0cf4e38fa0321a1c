# recsys: `make run` serves the demo, `make test` runs every test, `make bench` runs the benchmarks.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test audit bench lint services-up services-down clean

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
	@# tests/browser drives Debian's headless Chromium: install it when missing (CI runs as root); without it
	@# those tests skip, saying why.
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "browser tests: chromium is missing and installing it needs root; they will skip"; \
	  elif ! command -v apt-get >/dev/null; then echo "browser tests: chromium is missing and there is no apt-get; they will skip"; \
	  else echo "browser tests: installing chromium + chromium-driver with apt-get"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	      || echo "browser tests: apt-get could not install chromium; they will skip"; \
	  fi; \
	fi
	$(MAKE) --no-print-directory audit
	$(BIN)/python -m pytest

# Fails on a known vulnerability (pip-audit exits 1). Dependencies the advisory feed could not answer for are
# counted and said loudly; they fail the target only with AUDIT_STRICT=1 (a machine without pypi.org's JSON API
# would otherwise never pass).
audit: $(STAMP)  ## pip-audit the installed dependencies against PyPI's advisory feed
	@out=$$($(BIN)/pip-audit --progress-spinner off --skip-editable 2>&1); status=$$?; \
	skipped=$$(printf '%s\n' "$$out" | grep -c 'could not be audited'); \
	printf '%s\n' "$$out" | grep -v -E 'could not be audited|marked as editable|^Name +Skip Reason|^-+ +-+$$'; \
	if [ "$$skipped" -gt 0 ]; then \
	  echo "pip-audit: $$skipped dependencies NOT audited (the advisory feed did not answer for them)"; \
	  if [ "$(AUDIT_STRICT)" = 1 ]; then status=1; fi; \
	fi; \
	exit $$status

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
