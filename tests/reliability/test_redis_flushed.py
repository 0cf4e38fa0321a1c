"""Redis that lost its data (FLUSHALL, a restart without its append-only file), for real: the test flushes this run's
own database of the real server (what FLUSHALL does to it, without touching anyone else's). Personal lists then
come from the history in Postgres, marked degraded, instead of silently turning anonymous; the first request queues
rebuild_online_state, which the real Celery worker runs, and lists are personal and whole again after it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from catalog.models import Customer
from events import keys, online
from events.models import Interaction
from events.services import online_state_rebuild
from events.tasks import rebuild_online_state
from experiments.services import assignment_cache_clear
from kernel import redis_client
from ranking import rules, services, serving
from ranking.artifacts import loader
from tests.worlds import SMALL_PARAMS, cluster_world

pytestmark = pytest.mark.django_db(transaction=True)  # the worker's threads only see committed rows

CUSTOMER = "u0-0"


def _ids(api: APIClient, **params: Any) -> tuple[list[str], bool]:
    response = api.get("/v1/recommendations", {"count": 8, **params})
    assert response.status_code == 200, response.content
    body = response.json()
    return [item["item_id"] for item in body["items"]], body["degraded"]


def _online_state_degraded() -> float:
    return REGISTRY.get_sample_value("recsys_degraded_responses_total", {"reason": "online_state"}) or 0.0


def test_a_flushed_redis_serves_history_from_postgres_degraded_and_rebuilds_itself(
    celery_worker: object, api: APIClient, settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    cluster_world(clusters=(("wool", "scarf"), ("ceramic", "mug"), ("garden", "seed")), per_cluster=10, seed=5)
    services.model_train(params=SMALL_PARAMS, force=True)
    online_state_rebuild()  # the state a running shop has: every history in Redis
    serving.clear_caches()
    rules.reset()
    loader().reset()
    assignment_cache_clear()
    customer = Customer.objects.get(external_id=CUSTOMER)
    bought = set(Interaction.objects.filter(customer=customer).values_list("item__external_id", flat=True))

    anonymous, _ = _ids(api)
    personal, degraded = _ids(api, customer_id=CUSTOMER)
    assert not degraded
    assert personal != anonymous
    assert not bought & set(personal)

    redis_client.get().flushdb()
    before = _online_state_degraded()
    after_flush, degraded = _ids(api, customer_id=CUSTOMER)
    # Still this customer's list (their purchases left out, not the anonymous one), and it says it is degraded.
    assert degraded is True
    assert _online_state_degraded() == before + 1
    assert after_flush != anonymous
    assert not bought & set(after_flush)
    _ids(api, customer_id=CUSTOMER, count=7)  # more requests while the rebuild is queued or running...

    deadline = time.monotonic() + 60
    while not online.read_complete():  # ...which the worker runs by itself
        assert time.monotonic() < deadline, "rebuild_online_state did not run"
        time.sleep(0.1)
    assert [record.msg for record in caplog.records].count("online_state_rebuild_requested") == 1
    assert online.read_history(CUSTOMER, limit=10)

    rebuilt, degraded = _ids(api, customer_id=CUSTOMER)
    assert degraded is False
    assert rebuilt != anonymous
    assert not bought & set(rebuilt)


def test_a_queued_rebuild_is_a_no_op_while_another_one_runs() -> None:
    """Serving may queue a rebuild while an operator's is running: the queued one must not fail or interleave."""
    running = redis_client.get().lock(keys.REBUILD_LOCK, timeout=60, blocking=False)
    assert running.acquire()
    try:
        skipped = rebuild_online_state.apply().get()
        # It looks again later (a follow-up queued for when the other's lock would have expired had it died).
        assert skipped == {"skipped": "another rebuild_online_state is running; looking again later"}
    finally:
        running.release()
    assert rebuild_online_state.apply().get()["owners"] == 0  # and runs once the other one is done
    assert online.read_complete()
