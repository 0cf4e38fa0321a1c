"""Production settings refuse DEBUG and the development secret key; `check --deploy` is clean when configured."""

from __future__ import annotations

import os
import subprocess
import sys

from django.conf import settings

GOOD_SECRET = "x7%Qp2!vL9#mR4@tZ8^wK1&nB6*cF3(hJ5)gD0-sA2_eY7+uI9=oP4~qW6"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "recsys.settings.prod",
        "DATABASE_URL": settings.DATABASE_URL,
        "REDIS_URL": settings.REDIS_URL,
        "ALLOWED_HOSTS": "recs.example.com",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], env=base | env, capture_output=True, text=True,
        cwd=settings.BASE_DIR, timeout=120,
    )  # fmt: skip


def test_production_refuses_debug() -> None:
    result = _run("check", SECRET_KEY=GOOD_SECRET, DEBUG="1")
    assert result.returncode != 0
    assert "DEBUG must be off in production" in result.stderr


def test_production_refuses_the_development_secret() -> None:
    result = _run("check", SECRET_KEY="dev-insecure-secret-key-do-not-use-in-production")
    assert result.returncode != 0
    assert "SECRET_KEY must be a unique random value" in result.stderr


def test_production_requires_a_secret() -> None:
    result = _run("check")
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = _run("check", "--deploy", "--fail-level", "WARNING", SECRET_KEY=GOOD_SECRET)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_the_object_store_client_gives_up_within_seconds() -> None:
    """botocore's defaults (60 s to connect, 60 s per read, retried) held a fresh web process's requests for three
    minutes against an object store that accepted connections and never answered (a sixth tester, 5 December)."""
    code = (
        "from django.conf import settings; c = settings.STORAGES['artifacts']['OPTIONS']['client_config'];"
        "print(c.connect_timeout, c.read_timeout, c.retries['max_attempts'])"
    )
    result = _run("shell", "-c", code, SECRET_KEY=GOOD_SECRET, ARTIFACT_S3_BUCKET="models")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["3", "20", "3"]


def test_production_serves_no_demo_and_refuses_its_commands() -> None:
    """Under production settings the demo storefront answered at / (a customer picker showing anyone's lists
    without a login; its first view created two API keys), and runstack created an admin/admin superuser (a ninth
    tester, 6 December). Both are off unless DEMO_ENABLED=1."""
    code = (
        "from django.urls import resolve, Resolver404\n"
        "try:\n    resolve('/'); print('storefront served')\n"
        "except Resolver404:\n    print('no storefront')\n"
        "resolve('/v1/customers'); print('api served')"
    )
    result = _run("shell", "-c", code, SECRET_KEY=GOOD_SECRET)
    assert result.returncode == 0, result.stderr
    assert "no storefront" in result.stdout
    assert "api served" in result.stdout
    for command, *args in (("runstack", "--no-serve"), ("load_demo",), ("replay_demo_traffic",)):
        refused = _run(command, *args, SECRET_KEY=GOOD_SECRET)
        assert refused.returncode != 0, command
        assert f"{command} sets up the local demo and is refused where the demo is off" in refused.stderr
    enabled = _run("shell", "-c", code, SECRET_KEY=GOOD_SECRET, DEMO_ENABLED="1")
    assert "storefront served" in enabled.stdout
