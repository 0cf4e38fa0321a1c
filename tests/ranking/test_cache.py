"""The two-tier list cache: hits per tier, single-flight under a stampede, TTL, Redis shared across processes,
owner versions, reads prefetched in the miss round trip (the lookup's own for a key the process never held), the
store written once the request has answered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.core.signals import request_finished, request_started

from kernel import redis_client, tracking
from ranking import cache as list_cache
from ranking.cache import ListCache, owner_entries_delete


def _versions(n: int = 1) -> list[str]:
    """The commands that read ``n`` owners' versions: each GET after CLIENT CACHING YES, behind one CLIENT TRACKING,
    when the process tracks versions (kernel/tracking.py; never on a cluster)."""
    return ["CLIENT", *["CLIENT", "GET"] * n] if tracking.VersionTracker.enabled() else ["GET"] * n


def _another_process_wrote(key: str) -> None:
    """Wait until Redis's invalidation of ``key`` has reached this process (a few µs after the write, when tracked):
    the same process wrote it here, without telling its tracker as the events service does."""
    deadline = time.monotonic() + 5
    while tracking.TRACKER.known([key]) is not None:
        assert time.monotonic() < deadline, "no invalidation"
        time.sleep(0.001)


def test_miss_then_l1_then_l2_from_another_process() -> None:
    calls = []
    first = ListCache(ttl_seconds=30)
    value, tier = first.get_or_compute("rec:a", lambda _: calls.append(1) or {"items": [1, 2]})
    assert (value, tier) == ({"items": [1, 2]}, "miss")
    assert first.get_or_compute("rec:a", lambda _: {"items": []}) == ({"items": [1, 2]}, "l1")
    # A second process has an empty L1 but shares Redis.
    second = ListCache(ttl_seconds=30)
    assert second.get_or_compute("rec:a", lambda _: {"items": []}) == ({"items": [1, 2]}, "l2")
    assert calls == [1]
    ttl = redis_client.get().ttl("rec:a")
    assert 27 <= ttl <= 33  # ±10% jitter


def test_a_stampede_computes_once() -> None:
    cache = ListCache(ttl_seconds=30)
    computed = []

    def slow(_: object) -> dict:
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
    cache.get_or_compute("rec:short", lambda _: {"v": 1})
    time.sleep(0.3)
    redis_client.get().delete("rec:short")
    assert cache.get_or_compute("rec:short", lambda _: {"v": 2}) == ({"v": 2}, "miss")


def test_different_keys_never_share_values() -> None:
    cache = ListCache()
    cache.get_or_compute("rec:customer-a:0", lambda _: {"who": "a"})
    assert cache.get_or_compute("rec:customer-b:0", lambda _: {"who": "b"}) == ({"who": "b"}, "miss")


def test_a_stampede_across_processes_computes_once() -> None:
    # Two ListCache instances stand for two web processes: the loser waits for the winner's value in Redis.
    computed = []

    def slow(_: object) -> dict:
        computed.append(1)
        time.sleep(0.1)
        return {"n": 2}

    results: list[tuple] = []
    caches = [ListCache(ttl_seconds=30), ListCache(ttl_seconds=30)]
    threads = [threading.Thread(target=lambda c=c: results.append(c.get_or_compute("rec:hot2", slow))) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert computed == [1]
    assert sorted(tier for _, tier in results) == ["l2", "miss"]
    assert [value for value, _ in results] == [{"n": 2}, {"n": 2}]


def test_a_bumped_owner_version_misses_in_both_tiers() -> None:
    client = redis_client.get()
    client.set("cv:test-owner", 3)
    first, second = ListCache(ttl_seconds=30), ListCache(ttl_seconds=30)
    assert first.get_or_compute("rec:v", lambda _: {"at": 3}, version_key="cv:test-owner") == ({"at": 3}, "miss")
    assert second.get_or_compute("rec:v", lambda _: {"at": 0}, version_key="cv:test-owner") == ({"at": 3}, "l2")
    client.incr("cv:test-owner")  # an event for the owner
    assert first.get_or_compute("rec:v", lambda _: {"at": 4}, version_key="cv:test-owner") == ({"at": 4}, "miss")
    assert second.get_or_compute("rec:v", lambda _: {"at": 0}, version_key="cv:test-owner") == ({"at": 4}, "l2")


def test_prefetched_reads_reach_the_computation_only_on_a_miss() -> None:
    client = redis_client.get()
    client.set("prefetch:probe", b"hello")
    seen: list[object] = []
    cache = ListCache(ttl_seconds=30)

    def compute(prefetched: object) -> dict:
        seen.append(prefetched)
        return {"ok": True}

    def prefetch(pipe: object) -> None:
        pipe.get("prefetch:probe")  # type: ignore[attr-defined]

    assert cache.get_or_compute("rec:p", compute, prefetch=prefetch) == ({"ok": True}, "miss")
    assert cache.get_or_compute("rec:p", compute, prefetch=prefetch) == ({"ok": True}, "l1")
    assert [prefetched.replies for prefetched in seen] == [[b"hello"]]  # type: ignore[attr-defined]
    assert 0 < seen[0].seconds < 5  # type: ignore[attr-defined]  # the round trip's time, for the trace
    assert client.get("lock:rec:p") is None  # the single-flight lock was released with the store


def test_an_l2_entry_that_is_not_ours_is_a_miss() -> None:
    redis_client.get().set("rec:garbage", b"\xff not json")
    redis_client.get().set("rec:old-format", b'{"items": [1]}')
    cache = ListCache(ttl_seconds=30)
    assert cache.get_or_compute("rec:garbage", lambda _: {"ok": 1}) == ({"ok": 1}, "miss")
    assert cache.get_or_compute("rec:old-format", lambda _: {"ok": 2}) == ({"ok": 2}, "miss")


@pytest.mark.django_db  # the request signals' other receivers tend the database connection
def test_within_a_request_the_store_and_the_unlock_wait_for_its_end() -> None:
    client = redis_client.get()
    cache = ListCache(ttl_seconds=30)
    request_started.send(sender=None)
    try:
        assert cache.get_or_compute("rec:req", lambda _: {"n": 1}) == ({"n": 1}, "miss")
        assert cache.get_or_compute("rec:req", lambda _: {"n": 2}) == ({"n": 1}, "l1")  # in L1 at once
        assert client.get("rec:req") is None  # not yet in Redis: the client is not kept waiting for it
        assert client.get("lock:rec:req") is not None
    finally:
        request_finished.send(sender=None)  # gunicorn sends it once the response is written
    assert ListCache(ttl_seconds=30).get_or_compute("rec:req", lambda _: {"n": 3}) == ({"n": 1}, "l2")
    assert client.get("lock:rec:req") is None


@pytest.mark.django_db
def test_erasing_an_owners_lists_first_writes_what_the_request_has_not_stored_yet() -> None:
    cache = ListCache(ttl_seconds=30)
    request_started.send(sender=None)
    try:
        cache.get_or_compute("rec:home:erased-owner:10", lambda _: {"n": 1})
        assert redis_client.get().get("rec:home:erased-owner:10") is None  # still queued
        assert owner_entries_delete("erased-owner") == 1  # written first, then deleted with the rest
    finally:
        request_finished.send(sender=None)
    assert not list(redis_client.get().scan_iter(match="rec:*erased-owner*"))


class _RoundTrips:
    """Counts the pipelines this process sends, on a single Redis or a cluster (the real clients' own, wrapped:
    every command still reaches Redis)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.client import Pipeline
        from redis.cluster import ClusterPipeline

        self.sent: list[list[str]] = []
        for cls in (Pipeline, ClusterPipeline):
            monkeypatch.setattr(cls, "execute", self._counted(cls.execute))

    def _counted(self, execute: Callable[..., Any]) -> Callable[..., Any]:
        def counted(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            # A Pipeline queues (args, options); a ClusterPipeline queues commands with .args.
            queued = [getattr(command, "args", None) or command[0] for command in pipe.command_stack]
            self.sent.append([str(args[0]).upper() for args in queued])
            return execute(pipe, *args, **kwargs)

        return counted


def test_a_key_never_held_misses_in_one_round_trip_with_its_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis_client.get()
    client.set("cv:one-trip", 7)
    client.set("prefetch:one-trip", b"state")
    trips = _RoundTrips(monkeypatch)
    seen: list[object] = []
    cache = ListCache(ttl_seconds=30)

    def compute(prefetched: object) -> dict:
        seen.append(prefetched.replies)  # type: ignore[attr-defined]
        return {"n": 1}

    value = cache.get_or_compute(
        "rec:one-trip", compute, version_key="cv:one-trip", prefetch=lambda pipe: pipe.get("prefetch:one-trip")
    )
    assert value == ({"n": 1}, "miss")
    assert seen == [[b"state"]]
    # Before the answer: one pipeline (the version, the entry, the lock claim, the reads); after it, the store.
    assert trips.sent[0] == [*_versions(), "GET", "SET", "GET", "GET"]
    assert trips.sent[1:] == [["SET", "DEL"]]
    assert client.get("lock:rec:one-trip") is None


def test_a_key_held_under_an_older_version_claims_in_a_second_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis_client.get()
    client.set("cv:older", 1)
    cache = ListCache(ttl_seconds=30)
    cache.get_or_compute("rec:older", lambda _: {"at": 1}, version_key="cv:older")
    client.incr("cv:older")
    _another_process_wrote("cv:older")
    trips = _RoundTrips(monkeypatch)
    assert cache.get_or_compute("rec:older", lambda _: {"at": 2}, version_key="cv:older") == ({"at": 2}, "miss")
    # A key in L1 is most likely a hit: the lookup reads the version alone; held under an older one, the entry,
    # the lock claim and the reads follow in a second round trip.
    assert trips.sent == [_versions(), ["GET", "SET", "GET"], ["SET", "DEL"]]
    assert cache.get_or_compute("rec:older", lambda _: {"at": 0}, version_key="cv:older") == ({"at": 2}, "l1")
    # A hit: no round trip while Redis has not said the version moved (tracked), else the version alone.
    assert trips.sent[3:] == ([] if tracking.VersionTracker.enabled() else [["GET"]])


def test_a_list_without_owners_held_in_l1_costs_no_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ListCache(ttl_seconds=30)
    cache.get_or_compute("rec:nobody", lambda _: {"n": 1})
    trips = _RoundTrips(monkeypatch)
    assert cache.get_or_compute("rec:nobody", lambda _: {"n": 2}) == ({"n": 1}, "l1")
    assert trips.sent == []


@pytest.mark.django_db
def test_a_lock_claimed_for_a_list_found_in_l2_is_given_back_with_the_requests_stores() -> None:
    client = redis_client.get()
    ListCache(ttl_seconds=30).get_or_compute("rec:found", lambda _: {"n": 1})  # another process stored it
    cache = ListCache(ttl_seconds=30)
    request_started.send(sender=None)
    try:
        assert cache.get_or_compute("rec:found", lambda _: {"n": 2}) == ({"n": 1}, "l2")
        assert client.get("lock:rec:found") is not None  # claimed in the lookup, not needed
    finally:
        request_finished.send(sender=None)
    assert client.get("lock:rec:found") is None


def test_a_waiter_computes_as_soon_as_the_holder_lets_go_without_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process holds the lock (computing for another version, or failing): once it lets go with no value
    # for this version in L2, the waiter computes at once instead of waiting out its patience.
    monkeypatch.setattr("ranking.cache._WAIT_FOR_PEER_S", 60.0)
    client = redis_client.get()
    client.set("lock:rec:let-go", b"another-process", px=60_000)
    releaser = threading.Timer(0.1, lambda: client.delete("lock:rec:let-go"))
    releaser.start()
    started = time.monotonic()
    assert ListCache(ttl_seconds=30).get_or_compute("rec:let-go", lambda _: {"n": 1}) == ({"n": 1}, "miss")
    assert time.monotonic() - started < 30  # not the 60 s patience
    releaser.join()


def test_a_forked_process_takes_locks_under_a_token_of_its_own() -> None:
    # gunicorn forks its workers from a master that imported the module cache: two workers are two processes to the
    # lock, so one waits for the other's value instead of computing the same list beside it.
    import multiprocessing

    cache = ListCache(ttl_seconds=30)
    context = multiprocessing.get_context("fork")
    tokens = context.Queue()
    child = context.Process(target=lambda: tokens.put(cache._token))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert tokens.get(timeout=5) != cache._token


def test_list_keys_cannot_be_spelled_by_other_owners_or_parameters() -> None:
    """Ids are free text: no owner, and no combination of owners and parameters, reads like another's key."""
    keys = [
        list_cache.list_key("home", ["a:7"], (10, None)),
        list_cache.list_key("home", ["a"], (7, "10:-")),
        list_cache.list_key("home", ["a|s:b"], (10, None)),
        list_cache.list_key("home", ["a", "s:b"], (10, None)),
        list_cache.list_key("home", [], (10, None)),
        list_cache.list_key("home", [], (10, "-")),
        list_cache.list_key("home", ["-"], (10, None)),
        list_cache.list_key("home", ["%3A"], (10, None)),
        list_cache.list_key("home", [":"], (10, None)),
    ]
    assert len(set(keys)) == len(keys)
    # and erasure's patterns find an owner's keys in every form, and nobody else's
    client = redis_client.get()
    for key in keys:
        client.set(key, b"[]")
    for owner, expected in (("a", {keys[1], keys[3]}), ("s:b", {keys[3]}), ("a:7", {keys[0]}), (":", {keys[8]})):
        found = {
            k.decode() for pattern in list_cache.owner_entry_patterns(owner) for k in client.scan_iter(match=pattern)
        }
        assert found == expected, owner
