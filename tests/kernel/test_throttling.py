"""Rate limits shared by every web process: each process counts locally and a background sync sums the counts in
Redis, so a limit holds across processes without a round trip on the request path."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import override_settings

from kernel import redis_client, throttling
from kernel.models import ApiKey
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def _key_counter() -> str:
    key_id = ApiKey.objects.latest("pk").pk
    return f"throttle:key:{key_id}:{int(time.time() // throttling.WINDOW_SECONDS)}"


def test_this_process_hits_reach_redis_at_the_next_sync(make_api_client: Any) -> None:
    ItemFactory(external_id="sku-1")
    client = make_api_client("catalog")
    counter = _key_counter()
    for _ in range(3):
        assert client.get("/v1/items/sku-1").status_code == 200
    throttling.sync_now()
    assert int(redis_client.get().get(counter)) == 3
    assert 0 < redis_client.get().ttl(counter) <= 2 * throttling.WINDOW_SECONDS
    client.get("/v1/items/sku-1")
    throttling.sync_now()
    assert int(redis_client.get().get(counter)) == 4  # only what was pending is added, never counted twice


def test_hits_of_other_processes_count_against_the_limit(make_api_client: Any) -> None:
    ItemFactory(external_id="sku-1")
    client = make_api_client("catalog", rate_per_minute=5)
    counter = _key_counter()
    assert client.get("/v1/items/sku-1").status_code == 200
    throttling.sync_now()
    redis_client.get().incrby(counter, 3)  # three requests another web process served and synced meanwhile
    # This process learns the shared total when it next sends its own hits: 1 + 3 + 1 = 5, still allowed...
    assert client.get("/v1/items/sku-1").status_code == 200
    throttling.sync_now()
    # ...and the 6th request overall is refused, although this process alone has served only two.
    assert client.get("/v1/items/sku-1").status_code == 429


@override_settings(API_CUSTOMER_RATE_PER_MINUTE=3)
def test_the_per_customer_limit_holds_across_processes(make_api_client: Any) -> None:
    ItemFactory(external_id="sku-1")
    client = make_api_client("recommend")
    assert client.get("/v1/recommendations", {"customer_id": "c1"}).status_code == 200
    throttling.sync_now()
    key_id = ApiKey.objects.latest("pk").pk
    [counter] = [key.decode() for key in redis_client.get().scan_iter(match=f"throttle:cust:{key_id}:*")]
    redis_client.get().incrby(counter, 1)  # the same customer, served by another process
    assert client.get("/v1/recommendations", {"customer_id": "c1"}).status_code == 200
    throttling.sync_now()
    assert client.get("/v1/recommendations", {"customer_id": "c1"}).status_code == 429  # 4 > 3 across processes
    assert client.get("/v1/recommendations", {"customer_id": "c2"}).status_code == 200  # per customer


def test_the_background_sync_runs_without_being_asked(make_api_client: Any) -> None:
    ItemFactory(external_id="sku-1")
    client = make_api_client("catalog")
    counter = _key_counter()
    client.get("/v1/items/sku-1")
    deadline = time.monotonic() + 5
    while redis_client.get().get(counter) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert int(redis_client.get().get(counter)) == 1
