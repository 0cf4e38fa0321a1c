"""Shared fixtures: API clients with scoped keys, a clean Redis per test, a real Celery worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from rest_framework.test import APIClient

from events import online
from experiments.services import assignment_cache_clear, impressions_buffer_clear
from kernel import auth, redis_client, throttling, tracking
from kernel.api_keys import api_key_create
from ranking import serving
from ranking.artifacts import pinned


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Every test starts with an empty online store (the tests' own Redis database, never the demo's), complete as
    far as serving knows (tests of a lost online state delete the marker)."""
    # First this process's unsent counts and impressions, so nothing of the previous test reaches this one's store.
    impressions_buffer_clear()
    throttling.pause_clear()
    redis_client.get().flushdb()
    tracking.TRACKER.clear()  # Redis says so too (a flush invalidates everything), only asynchronously
    online.mark_complete(now=time.time())
    auth.clear_cache()
    assignment_cache_clear()
    pinned().clear()  # versions an experiment arm named: the next test's registry may reuse their ids
    # Per-process caches (new arrivals, the popular fallback, item rows, opt-outs, local lists) hold the previous
    # test's database, which is gone: a popular fallback cached empty (no items yet) for a minute answered the next
    # test's requests with empty lists (two tests failed after tests/kernel/test_browser_middleware.py, 6 December).
    serving.clear_caches()


@pytest.fixture
def make_api_client(db: None) -> Callable[..., APIClient]:
    def make(*scopes: str, rate_per_minute: int | None = None) -> APIClient:
        _, plaintext = api_key_create(name="test", scopes=scopes, rate_per_minute=rate_per_minute)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return client

    return make


@pytest.fixture
def api(make_api_client: Callable[..., APIClient]) -> APIClient:
    """A storefront's key: recommendations, events and catalog."""
    return make_api_client("recommend", "events", "catalog")


@pytest.fixture
def admin_api(make_api_client: Callable[..., APIClient]) -> APIClient:
    return make_api_client("admin")


WORKER_QUEUES = ["default", "events", "training", "indexing"]


@pytest.fixture(scope="session")
def celery_worker_session(django_db_setup: None, django_db_blocker: object) -> Iterator[object]:
    """A real Celery worker (threads pool) on the real Redis broker, for the whole session; it consumes only while
    a test holds the ``celery_worker`` fixture.

    Tests that need it take the ``celery_worker`` fixture and must be ``transaction=True``: the worker's threads
    use their own database connections and only see committed rows.
    """
    from celery.contrib.testing.worker import start_worker

    from recsys.celery import app

    app.conf.task_always_eager = False
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30,
            queues=WORKER_QUEUES,
        ) as worker:  # fmt: skip
            _worker_consume(worker, on=False)
            yield worker
    # The worker's threads kept their own database connections; close them so the test database can be dropped.
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def _worker_consume(worker: object, *, on: bool) -> None:
    """Start or stop the worker's consumers of every queue (remote control, answered before this returns).

    Between worker tests it consumes nothing: tests without the worker still queue tasks (serving asks for
    ``rebuild_online_state`` when the online state is lost), and a task run then would race that test (a rebuild
    from its uncommitted data clears its Redis state) or hold locks while a transactional test's tables are
    truncated (a deadlock in the flush, seen in CI).
    """
    from recsys.celery import app

    hostname = worker.hostname  # type: ignore[attr-defined]
    for queue in WORKER_QUEUES:
        command = app.control.add_consumer if on else app.control.cancel_consumer
        replies = command(queue, destination=[hostname], reply=True, timeout=10)
        if not replies:
            raise TimeoutError(f"the test worker did not answer {'add' if on else 'cancel'}_consumer({queue!r})")


def _worker_idle_and_purged(timeout: float = 120.0) -> None:
    """Wait until the worker runs (and holds) no task, then drop the messages waiting in the broker, whose Redis
    database is not flushed between tests."""
    from celery.worker import state

    from recsys.celery import app

    deadline = time.monotonic() + timeout
    while state.active_requests or state.reserved_requests:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test worker still runs {len(state.active_requests)} task(s) after {timeout} s")
        time.sleep(0.05)
    with app.connection_for_write() as conn:
        for queue in WORKER_QUEUES:
            conn.default_channel.queue_purge(queue)


@pytest.fixture
def celery_worker(celery_worker_session: object, transactional_db: None) -> Iterator[object]:
    _worker_idle_and_purged()  # what earlier tests queued is not this test's to run
    _worker_consume(celery_worker_session, on=True)
    yield celery_worker_session
    # Before transactional_db truncates the tables: nothing the test queued may still run or hold their locks.
    _worker_consume(celery_worker_session, on=False)
    _worker_idle_and_purged()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server for the session: moto's standalone server (a PyPI package, no Docker, no
    account) as a subprocess on a free loopback port. Its endpoint URL; the tests skip, saying why, only when it
    cannot start."""
    import socket
    import subprocess
    import sys

    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"object storage tests need moto's server (pip install 'moto[server]'): {exc}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
    deadline = time.monotonic() + 30.0
    while True:
        if process.poll() is not None:
            pytest.skip(f"moto's S3 server exited at start ({process.returncode}): {log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.skip(f"moto's S3 server did not listen on 127.0.0.1:{port} within 30 s")
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
