"""The Celery app's logging: a worker started exactly as docs/operations.md says (no ``--loglevel``) logs its tasks'
INFO events, with their extra fields, in the format of every other process (Django's LOGGING)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

from events.tasks import fold_item_counters

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def test_a_worker_started_as_documented_logs_info_events_with_their_fields() -> None:
    queue = f"logcheck-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(settings.DATABASE_URL)
    env = {key: value for key, value in os.environ.items() if key not in ("LOG_LEVEL", "LOG_FORMAT")} | {
        "DJANGO_SETTINGS_MODULE": "recsys.settings.test",
        "DATABASE_URL": urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"])),
        "RECSYS_TEST_KEEP_REDIS_DB": "1",
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
    }
    # docs/operations.md's command, on a queue of its own (the suite's in-process worker never takes the task).
    command = [str(Path(sys.executable).parent / "celery"), "-A", "recsys", "worker", "-Q", queue,
               "--concurrency", "1", "--hostname", f"{queue}@%h"]  # fmt: skip
    worker = subprocess.Popen(
        command, cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        fold_item_counters.apply_async(queue=queue).get(timeout=120)
    finally:
        worker.terminate()
        log = worker.communicate(timeout=60)[1]
    timestamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(
        timestamp + r" INFO events.services.online_state item_features_folded items=\d+ seconds=[\d.]+$", log, re.M
    ), log
    assert re.search(
        timestamp + r" INFO celery.app.trace Task events.tasks.fold_item_counters\[.+\] succeeded", log, re.M
    )
