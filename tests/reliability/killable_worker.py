"""The task of the Celery workers that tests/reliability/test_worker_killed.py starts and kills (``celery -A recsys
worker -I tests.reliability.killable_worker``, settings ``tests.reliability.killable_worker_settings``): it records
each run, then waits to be released or killed."""

from __future__ import annotations

import json
import os

from recsys.celery import app


@app.task(bind=True, name="tests.killable_worker.record_and_wait")
def record_and_wait(self: object, key: str) -> None:
    """Append this run (its process, whether the broker redelivered it) to the list ``key`` in the broker's Redis,
    then wait until ``<key>:release`` is pushed. No options of its own: acks_late and reject on worker loss come
    from the settings, as for the project's tasks."""
    request = self.request  # type: ignore[attr-defined]
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        run = {"pid": os.getpid(), "redelivered": bool(request.delivery_info.get("redelivered"))}
        client.rpush(key, json.dumps(run))
        client.blpop([f"{key}:release"], timeout=120)
