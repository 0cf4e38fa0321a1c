"""Redis commands per API call, counted on the real server with MONITOR (the capacity model's "Redis ops per
request", docs/scaling.md): an uncached list, a cached list and a one-event POST, on a trained model."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from experiments.services import impressions
from kernel import redis_client, throttling, tracking
from ranking import rules, serving
from ranking.artifacts import loader
from ranking.shown import SHOWN
from tests.ranking.test_serving import world  # noqa: F401 - the trained module world

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh(world: dict[str, Any]) -> None:  # noqa: F811
    serving.clear_caches()
    rules.reset()
    loader().reset()


def _count(call: Callable[[], Any]) -> Counter[str]:
    """The commands this process sent to its Redis database while ``call`` ran (MONITOR, filtered by database)."""
    db = redis_client.get().connection_pool.connection_kwargs.get("db", 0)
    monitor_client = redis.Redis.from_url(settings.REDIS_DATA_URL)
    seen: Counter[str] = Counter()
    ready = threading.Event()
    marker = "capacity-model-end"

    def listen() -> None:
        with monitor_client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if str(command.get("db")) != str(db):
                    continue
                text = command["command"]
                if marker in text:
                    return
                seen[text.split()[0].upper()] += 1

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(5)
    call()
    redis_client.get().echo(marker)
    thread.join(10)
    return seen


@pytest.fixture
def warm(api: APIClient, monkeypatch: pytest.MonkeyPatch) -> APIClient:
    for customer in ("u0-0", "u1-0"):  # load the model, compile, fill per-process caches
        api.get("/v1/recommendations", {"customer_id": customer, "count": 10})
    # The background writers (what answers showed, impressions, the rate limits' shared counts) send every 50-100 ms
    # what earlier requests left: hold them, let a run in flight end, and send by hand between the windows, so a
    # window counts its own request only.
    for loop in (SHOWN._loop, impressions._buffer._loop, throttling._counts._loop):
        monkeypatch.setattr(loop, "work", lambda: None)
    time.sleep(0.2)
    return api


def _drain() -> None:
    """Send what earlier requests left in the held background writers, before a window opens."""
    SHOWN.flush()
    impressions.impressions_push()
    throttling._counts.sync()


def test_redis_commands_per_request(warm: APIClient, capsys: pytest.CaptureFixture[str]) -> None:
    api = warm
    _drain()
    uncached = _count(lambda: api.get("/v1/recommendations", {"customer_id": "u2-1", "count": 10}))
    _drain()
    cached = _count(lambda: api.get("/v1/recommendations", {"customer_id": "u2-1", "count": 10}))
    _drain()
    event = _count(
        lambda: api.post("/v1/events", {"customer_id": "u2-1", "item_id": "mug-1", "type": "view"}, format="json")
    )
    with capsys.disabled():
        for name, counts in (("uncached", uncached), ("cached", cached), ("event", event)):
            print(f"\n{name}: {sum(counts.values())} commands {dict(counts)}")
    # Bounds the capacity model relies on (measured 2026-12-05 17:10 UTC, the background writers held: 12 in two
    # round trips, 1 in one (the owner's version alone), and 14; with the versions tracked (kernel/tracking.py) a
    # cached list sends none, and the uncached one's two CLIENT commands do not show in MONITOR): a regression
    # shows here first.
    assert sum(cached.values()) == (0 if tracking.VersionTracker.enabled() else 1)
    assert sum(cached.values()) < sum(uncached.values()) <= 12
    assert 0 < sum(event.values()) <= 25
