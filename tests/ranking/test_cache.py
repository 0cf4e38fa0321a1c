"""The two-tier list cache: hits per tier, single-flight under a stampede, TTL, Redis shared across processes."""

from __future__ import annotations

import threading
import time

from ranking.cache import ListCache
from recsys import redis_client


def test_miss_then_l1_then_l2_from_another_process() -> None:
    calls = []
    first = ListCache(ttl_seconds=30)
    value, tier = first.get_or_compute("rec:a", lambda: calls.append(1) or {"items": [1, 2]})
    assert (value, tier) == ({"items": [1, 2]}, "miss")
    assert first.get_or_compute("rec:a", lambda: {"items": []}) == ({"items": [1, 2]}, "l1")
    # A second process has an empty L1 but shares Redis.
    second = ListCache(ttl_seconds=30)
    assert second.get_or_compute("rec:a", lambda: {"items": []}) == ({"items": [1, 2]}, "l2")
    assert calls == [1]
    ttl = redis_client.get().ttl("rec:a")
    assert 27 <= ttl <= 33  # ±10% jitter


def test_a_stampede_computes_once() -> None:
    cache = ListCache(ttl_seconds=30)
    computed = []

    def slow() -> dict:
        computed.append(1)
        time.sleep(0.2)
        return {"n": 1}

    results: list[tuple] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("rec:hot", slow))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert computed == [1]
    assert all(value == {"n": 1} for value, _ in results)
    assert sorted(tier for _, tier in results).count("miss") == 1


def test_entries_expire() -> None:
    cache = ListCache(ttl_seconds=0.2, jitter=0.0)
    cache.get_or_compute("rec:short", lambda: {"v": 1})
    time.sleep(0.3)
    redis_client.get().delete("rec:short")
    assert cache.get_or_compute("rec:short", lambda: {"v": 2}) == ({"v": 2}, "miss")


def test_different_keys_never_share_values() -> None:
    cache = ListCache()
    cache.get_or_compute("rec:customer-a:0", lambda: {"who": "a"})
    assert cache.get_or_compute("rec:customer-b:0", lambda: {"who": "b"}) == ({"who": "b"}, "miss")
