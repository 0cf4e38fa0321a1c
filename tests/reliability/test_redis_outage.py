"""Redis really stopped (a redis-server process, not a mock) in the middle of a test: events are still stored
durably and acknowledged, recommendations still served, readiness says not ready, liveness stays up, rate limits go
on counting per process, the privacy operations that need Redis refuse cleanly; and once Redis is back,
rebuild_online_state restores the history of the events that arrived during the outage.

The server stopped is a private one (the project's bundled redis-server with the flags of the shared one: unix
socket, append-only file), serving as this process's online-state Redis for the test, so the shared server that
other test runs and the demo use is never stopped. Celery's broker stays on the shared server.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.test import Client, override_settings
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from catalog.models import Customer
from events import online
from events.models import Interaction
from kernel import localservices, redis_client, throttling
from ranking import serving
from recsys import health
from tests.factories import CustomerFactory, InteractionFactory, ItemFactory

pytestmark = pytest.mark.django_db


class RedisOutage:
    """A private redis-server that this process uses as its Redis; :meth:`begin` stops it, :meth:`restore` (also
    run at teardown, always) starts it again on the same data, as a restarted persistent server comes back."""

    def __init__(self) -> None:
        # A short path: a unix socket path must fit in 107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="redis-outage-"))
        self.socket = self.directory / "redis.sock"
        self.down = True
        self.restore()
        self.client = redis.Redis(
            unix_socket_path=str(self.socket), socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT, health_check_interval=30,
        )  # fmt: skip

    def begin(self) -> None:
        localservices.stop_redis_server(self.directory / "redis.pid")
        self.down = True
        with pytest.raises(redis.ConnectionError):  # really down
            redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping()

    def restore(self) -> None:
        if not self.down:
            return
        localservices.launch_redis_server(self.directory, self.socket)
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                pass
            assert time.monotonic() < deadline, f"redis-server did not start; see {self.directory / 'redis.log'}"
            time.sleep(0.05)
        self.down = False
        if hasattr(self, "client"):
            # Connections to the stopped server are dead; the pool would replace them on use, this does it now.
            self.client.connection_pool.disconnect()
        throttling.pause_clear()

    def close(self) -> None:
        localservices.stop_redis_server(self.directory / "redis.pid")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisOutage]:
    outage = RedisOutage()
    try:
        monkeypatch.setattr(redis_client, "_client", outage.client)
        online.mark_complete(now=time.time())  # a running shop's Redis: the online state is whole
        serving.clear_caches()
        outage.begin()
        yield outage
    finally:
        outage.restore()
        outage.close()


@pytest.fixture
def shop() -> dict[str, Any]:
    items = [ItemFactory(external_id=f"sku-{n}") for n in range(6)]
    customer = CustomerFactory(external_id="c1")
    for n, item in enumerate(items[:3]):
        InteractionFactory(event_id=f"old-{n}", customer=customer, item=item, type=Interaction.Type.PURCHASE)
    serving.clear_caches()
    return {"items": items, "customer": customer}


def test_events_are_stored_during_an_outage_and_their_history_rebuilt_after(
    api: APIClient, shop: dict[str, Any], redis_down: RedisOutage
) -> None:
    batch = {"events": [{"event_id": f"out-{n}", "customer_id": "c1", "item_id": f"sku-{n}", "type": "click"}
                        for n in (3, 4, 5)]}  # fmt: skip

    response = api.post("/v1/events", batch, format="json")
    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    # A client retrying the same batch is told they are stored, and nothing is stored twice.
    assert api.post("/v1/events", batch, format="json").json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert Interaction.objects.filter(event_id__startswith="out-").count() == 3

    redis_down.restore()
    assert redis_client.get().ping()
    assert online.read_history("c1", limit=10) == []  # the online update was lost with the outage...
    call_command("rebuild_online_state", "--quiet", stdout=None)
    history = online.read_history("c1", limit=10)  # ...and is rebuilt from Postgres
    outage_pks = set(Interaction.objects.filter(event_id__startswith="out-").values_list("item_id", flat=True))
    assert outage_pks <= {row.item_pk for row in history}
    assert len(history) == 6


def _degraded_count(reason: str) -> float:
    return REGISTRY.get_sample_value("recsys_degraded_responses_total", {"reason": reason}) or 0.0


@override_settings(API_CUSTOMER_RATE_PER_MINUTE=2)
def test_the_api_keeps_answering_while_redis_is_down(
    make_api_client: Any, shop: dict[str, Any], redis_down: RedisOutage
) -> None:
    storefront = make_api_client("recommend", "catalog")
    for _ in range(2):
        redis_degraded = _degraded_count("redis")
        response = storefront.get("/v1/recommendations", {"customer_id": "c1", "count": 3})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["degraded"] is True
        assert _degraded_count("redis") == redis_degraded + 1  # counted in recsys_degraded_responses_total
        # The history comes from Postgres: what c1 already bought is left out...
        assert {item["item_id"] for item in body["items"]} == {"sku-3", "sku-4", "sku-5"}
    assert storefront.get("/v1/recommendations").status_code == 200  # ...and anonymous visitors get a list.
    # Rate limits neither fail closed nor open: each process goes on counting by itself (2 per customer here).
    assert storefront.get("/v1/recommendations", {"customer_id": "c1", "count": 3}).status_code == 429

    assert Client().get("/healthz").status_code == 200
    health.reset()  # readiness is re-checked at most once a second per process: forget the last answer
    started = time.monotonic()
    ready = Client().get("/readyz")
    readyz_seconds = time.monotonic() - started
    # Serving degrades without Redis (lists from Postgres), so this process stays in the pool, saying so.
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["redis"]["ok"] is False
    assert ready.json()["checks"]["database"]["ok"] is True
    assert readyz_seconds < 15

    # Erasure and export need Redis to be complete: refused with 503, and nothing is deleted.
    response = storefront.delete("/v1/customers/c1")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert Customer.objects.filter(external_id="c1").exists()
    assert Interaction.objects.filter(customer__external_id="c1").count() == 3
    assert storefront.get("/v1/customers/c1/export").status_code == 503
