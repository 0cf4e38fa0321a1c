"""A Celery worker killed while it runs a task, for real: separate ``celery -A recsys worker`` processes (prefork, the
project's settings, on a queue of this test's own), killed with SIGKILL. When only the pool process running the task
dies, the worker puts the task back at once and it runs again; when the whole worker dies, nothing does: the task
waits in the broker's unacked set until the visibility timeout has passed, and runs again only then, when a worker
looks (one that starts, here). The visibility timeout is shortened for the test (killable_worker_settings.py);
the project's is 4 hours (docs/reliability.md, "Worker down")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings

from recsys.celery import app

VISIBILITY_TIMEOUT = 10.0  # long enough for a worker to start well within it


class Workers:
    """Celery workers started as the deployment starts them (``celery -A recsys worker``), each in a process group
    of its own so that a SIGKILL takes the main process and its pool together, as a killed container or host would."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> tuple[subprocess.Popen[bytes], str]:
        hostname = f"{self.queue}-{len(self.started)}@localhost"
        env = os.environ | {
            "DJANGO_SETTINGS_MODULE": "tests.reliability.killable_worker_settings",
            # This run's broker, whatever test slot the worker's own process id would pick.
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
            "KILLABLE_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        }
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "recsys", "worker", "--pool", "prefork", "--concurrency", "1",
                "--queues", self.queue, "--hostname", hostname, "--include", "tests.reliability.killable_worker",
                "--without-mingle", "--without-gossip", "--loglevel", "WARNING",
            ],
            cwd=settings.BASE_DIR, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.started.append(process)
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[hostname], timeout=0.5):  # consuming: it answers the broker
            assert process.poll() is None, "the worker exited while starting"
            assert time.monotonic() < deadline, "the worker did not start"
        return process, hostname

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL to the whole worker: nothing of it runs any more, nothing is acknowledged or given back."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGTERM)  # warm shutdown
        process.wait(30)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture
def workers() -> Iterator[Workers]:
    queue = f"killed-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    started = Workers(queue)
    try:
        yield started
    finally:
        started.stop_all()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def _broker() -> Any:
    conn = app.connection_for_write()
    return conn, conn.default_channel.client


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_task_whose_worker_is_killed_runs_again_once_the_visibility_timeout_has_passed(workers: Workers) -> None:
    conn, client = _broker()
    key = f"test:killed-runs:{uuid.uuid4().hex}"
    task_id = ""
    try:

        def runs() -> list[dict[str, Any]]:
            return [json.loads(run) for run in client.lrange(key, 0, -1)]

        def unacked() -> bool:
            return any(task_id in message.decode() for message in client.hvals("unacked"))

        first, _ = workers.start()
        task_id = app.send_task("tests.killable_worker.record_and_wait", args=[key], queue=workers.queue).id
        _wait_for(lambda: len(runs()) == 1, 30, "the task did not start")

        # The pool process running it dies (the OOM killer, a SIGKILL of the child): the worker gives the task back
        # at once (acks_late, reject_on_worker_lost) and runs it again.
        os.kill(runs()[0]["pid"], signal.SIGKILL)
        _wait_for(lambda: len(runs()) == 2, 30, "a task whose pool process died was not run again")
        assert runs()[1]["redelivered"] is True
        delivered = time.monotonic()

        # The whole worker dies: nothing acknowledges the task or gives it back; the broker keeps it as unacked.
        workers.kill(first)
        assert unacked()
        # A worker started now does not run it: it was delivered less than the visibility timeout ago.
        second, _ = workers.start()
        time.sleep(1)
        assert len(runs()) == 2
        assert unacked()
        assert time.monotonic() - delivered < VISIBILITY_TIMEOUT
        workers.stop(second)

        # Once the timeout has passed, a worker that looks (one starting; a running one every ~100 s) gives it back to
        # its queue, and it runs again.
        time.sleep(max(0.0, VISIBILITY_TIMEOUT + 1 - (time.monotonic() - delivered)))
        third, _ = workers.start()
        _wait_for(lambda: len(runs()) == 3, 30, "the task of a killed worker was not run again after the timeout")
        assert runs()[2]["redelivered"] is True
        client.rpush(f"{key}:release", "1")  # let it finish: acknowledged, gone from the broker
        _wait_for(lambda: not unacked(), 30, "the task's last run was not acknowledged")
        workers.stop(third)
    finally:
        client.delete(key, f"{key}:release")
        for tag, message in client.hgetall("unacked").items():  # left by a failure: no later worker may restore it
            if task_id and task_id in message.decode():
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        conn.release()
