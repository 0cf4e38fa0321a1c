"""Test settings: the same real servers as dev, with the tests' own Redis databases."""

import os

from kernel.localservices import ensure_local_services

os.environ.setdefault("SECRET_KEY", "test-insecure-secret-key")
os.environ["DEBUG"] = "0"
ensure_local_services()
# Each test run gets its own Redis database pair and Postgres test database, so a running demo (Redis 0/1,
# database recsys) is never touched and two runs on one machine (a developer's and an editor's) never collide.
# RECSYS_TEST_SLOT (0-13) pins the slot, for several checkouts testing side by side on one machine.
_RUN_SLOT = int(os.environ.get("RECSYS_TEST_SLOT", os.getpid())) % 14
if os.environ.get("REDIS_CLUSTER") == "1":
    # The cluster group (tests/cluster, the Makefile's second run): the online state on the cluster REDIS_URL names
    # (one database, so the cluster is the run's own), the Celery broker on the local single Redis, this slot's pair.
    from kernel.localservices import ensure_redis
    from kernel.redis_urls import celery_url

    os.environ.setdefault("CELERY_BROKER_URL", celery_url(ensure_redis(), 3 + 2 * _RUN_SLOT))
elif not os.environ.get("RECSYS_TEST_KEEP_REDIS_DB"):
    from kernel.redis_urls import with_db

    os.environ["REDIS_URL"] = with_db(os.environ["REDIS_URL"], 2 + 2 * _RUN_SLOT)

from .base import *  # noqa: E402,F403

DATABASES["default"]["TEST"] = {"NAME": f"test_recsys_{_RUN_SLOT}"}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ARTIFACT_ROOT = BASE_DIR / "var" / "test-artifacts"  # noqa: F405
COMPILED_RANKER_DIR = str(ARTIFACT_ROOT / ".compiled")
API_DEFAULT_RATE_PER_MINUTE = 1_000_000
# Tests render admin pages without running collectstatic first.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "artifacts": STORAGES["artifacts"],  # noqa: F405  base's: ARTIFACT_ROOT, or S3 when ARTIFACT_S3_BUCKET is set
}
