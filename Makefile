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

test: $(STAMP)  ## the whole test suite on real Postgres, Redis and a Celery worker (plus lint, layers, types, migrations)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_SETTINGS_MODULE=recsys.settings.test $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/lint-imports  # the layers, no import circles, pure cores (pyproject [tool.importlinter])
	$(BIN)/mypy  # the pure cores and the services (pyproject [tool.mypy])
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
	@# The cluster group: the Redis-facing tests again with the online state on a real local 3-master Redis Cluster
	@# (kernel.rediscluster, from the bundled redis-server; the Celery broker stays on the single Redis).
	@# The cluster is stopped afterwards whatever the tests' outcome, which is the recipe's exit status.
	port=$$((7100 + 10 * ($${RECSYS_TEST_SLOT:-0} % 14))); \
	  url=$$($(BIN)/python -m kernel.rediscluster start --port $$port) || exit 1; \
	  REDIS_CLUSTER=1 REDIS_URL=$$url $(BIN)/python -m pytest $(CLUSTER_TESTS); status=$$?; \
	  $(BIN)/python -m kernel.rediscluster stop --port $$port; exit $$status

# Run by `make test` a second time on a Redis Cluster (docs/operations.md, "Redis Cluster").
CLUSTER_TESTS := tests/cluster tests/events tests/experiments tests/kernel/test_throttling.py tests/kernel/test_tracking.py \
  tests/ranking/test_cache.py tests/ranking/test_serving.py tests/ranking/test_hot_swap.py \
  tests/ranking/test_ranking_services.py tests/ranking/test_ranking_artifacts.py tests/ranking/test_artifact_storage.py \
  tests/reliability/test_redis_flushed.py tests/reliability/test_hardening_state.py \
  tests/ranking/test_not_interested_and_pages.py tests/ranking/test_had_items.py

# Fails on a known vulnerability. Dependencies the advisory feed could not answer for (or all of them, when
# pypi.org cannot be reached) are named loudly and fail the target only with AUDIT_STRICT=1.
define AUDIT_SUMMARY
import json, sys
path, strict = sys.argv[1], sys.argv[2] == "1"
try:
    deps = [d for d in json.load(open(path))["dependencies"] if "editable" not in d.get("skip_reason", "")]
except (OSError, ValueError, KeyError):
    print("pip-audit: NOT AUDITED: the advisory feed could not be reached (pip-audit's error above)")
    sys.exit(1 if strict else 0)
vulns = [(d["name"], d["version"], v["id"], ", ".join(v["fix_versions"]) or "no release yet") for d in deps for v in d.get("vulns", [])]
skipped = sorted(d["name"] for d in deps if "skip_reason" in d)
for name, version, vuln, fixed in vulns:
    print("pip-audit: VULNERABLE", name, version, vuln, "- fixed in", fixed)
print("pip-audit:", len(deps) - len(skipped), "of", len(deps), "dependencies audited,", len(vulns), "known vulnerabilities")
if skipped:
    print("pip-audit: NOT AUDITED, the advisory feed did not answer for:", " ".join(skipped))
    # The nearest thing: PyPI's advisories for each skipped dependency's latest release (.ci/audit_latest.py).
    sys.path.insert(0, ".ci")
    import audit_latest
    from importlib.metadata import version
    pins = [f"{name}=={version(name)}" for name in skipped]
    if audit_latest.main(pins):
        vulns.append("audit_latest")
sys.exit(1 if vulns or (skipped and strict) else 0)
endef
export AUDIT_SUMMARY

audit: $(STAMP)  ## pip-audit the installed dependencies against PyPI's advisory feed
	@report=$$(mktemp); \
	$(BIN)/pip-audit --progress-spinner off --skip-editable --format json --output $$report >/dev/null 2>$$report.err \
	  || tail -n 1 $$report.err; \
	$(BIN)/python -c "$$AUDIT_SUMMARY" $$report "$(AUDIT_STRICT)"; status=$$?; \
	rm -f $$report $$report.err; exit $$status

bench: $(STAMP)  ## every benchmark in bench/, each printing a table
	@for script in bench/bench_*.py; do echo "== $$script"; flock /tmp/recsys-cpu.lock $(BIN)/python $$script || exit 1; done

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

services-up: $(STAMP)  ## start the local Postgres and Redis (under var/)
	$(BIN)/python -m kernel.localservices up

services-down: $(STAMP)  ## stop the local Postgres and Redis
	$(BIN)/python -m kernel.localservices down

clean: services-down  ## stop the local servers and delete var/ (database, Redis data, artifacts)
	rm -rf var
