"""Postgres limits per process: web processes get a short statement timeout, long jobs (Celery, management
commands) a long one, and every connection attempt gives up after DB_CONNECT_TIMEOUT seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from kernel.env import JOB, WEB, process_role

pytestmark = pytest.mark.django_db


def _statement_timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return str(cursor.fetchone()[0])


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/srv/.venv/bin/gunicorn", "recsys.wsgi", "--workers", "4"], WEB),
        (["manage.py", "runserver"], WEB),
        (["/srv/.venv/lib/python3.11/site-packages/pytest/__main__.py", "tests"], WEB),
        (["/srv/.venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "recsys", "worker"], JOB),
        (["/srv/.venv/bin/celery", "-A", "recsys", "beat"], JOB),
        (["manage.py", "train", "--force"], JOB),
        (["manage.py", "import_events_csv", "events.csv"], JOB),
        (["bench/bench_soak.py"], JOB),
        ([], JOB),
    ],
)
def test_process_role_from_the_command_line(argv: list[str], role: str) -> None:
    assert process_role(argv, {}) == role


def test_db_process_role_overrides_the_command_line() -> None:
    assert process_role(["/srv/.venv/bin/uwsgi"], {"DB_PROCESS_ROLE": "web"}) == WEB
    assert process_role(["/srv/.venv/bin/gunicorn"], {"DB_PROCESS_ROLE": "JOB"}) == JOB
    with pytest.raises(ImproperlyConfigured):
        process_role(["manage.py", "train"], {"DB_PROCESS_ROLE": "worker"})


@pytest.mark.django_db(transaction=True)  # it opens a connection of its own
def test_this_web_process_connects_with_the_short_statement_timeout() -> None:
    assert settings.DB_PROCESS_ROLE == WEB
    assert settings.DB_STATEMENT_TIMEOUT_MS < settings.DB_JOB_STATEMENT_TIMEOUT_MS
    connection.close()  # a new connection, as a web process opens one
    assert _statement_timeout() == f"{settings.DB_STATEMENT_TIMEOUT_MS // 1000}s"


def test_a_management_command_connects_with_the_long_statement_timeout() -> None:
    script = (
        "from django.db import connection\n"
        "with connection.cursor() as cursor:\n"
        "    cursor.execute('SHOW statement_timeout')\n"
        "    print(cursor.fetchone()[0])\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "recsys.settings.test"}
    env.pop("DB_PROCESS_ROLE", None)
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == f"{settings.DB_JOB_STATEMENT_TIMEOUT_MS // 60_000}min"


def test_connecting_to_a_server_that_never_answers_gives_up_after_the_connect_timeout() -> None:
    """A host that accepts the TCP connection and then says nothing (a hung server, a half-open proxy)."""
    assert connection.get_connection_params()["connect_timeout"] == settings.DB_CONNECT_TIMEOUT
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or writes
        params = {**connection.get_connection_params(), "host": "127.0.0.1", "port": silent.getsockname()[1]}
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**params)
        elapsed = time.monotonic() - started
    assert settings.DB_CONNECT_TIMEOUT - 0.5 < elapsed < settings.DB_CONNECT_TIMEOUT + 2
