"""Versions trusted without a round trip (kernel/tracking.py), on the real Redis: tracked once read, forgotten when
Redis says the key changed in any way (a write from another connection, expiry, a flush), when this process wrote it,
when the invalidation connection is lost, or after ``max_age``; a read that an invalidation overtook is not
remembered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.test import override_settings

from events import keys, online
from kernel import redis_client, tracking
from kernel.tracking import VersionTracker


@pytest.fixture
def tracker() -> Iterator[VersionTracker]:
    if not VersionTracker.enabled():
        pytest.skip("a Redis Cluster never tracks versions")
    own = VersionTracker(max_age=30.0)
    yield own
    own.clear()


def _read(tracker: VersionTracker, *names: str) -> list[object]:
    """A tracked read of ``names`` as the list cache makes it: one pipeline, its replies through the tracker."""
    ticket = tracker.begin(names)
    assert ticket is not None
    pipe = redis_client.get().pipeline(transaction=False)
    tracker.queue(pipe, ticket, names)
    return tracker.finish(ticket, pipe.execute(raise_on_error=False))


def _until_forgotten(tracker: VersionTracker, name: str) -> float:
    """Seconds until ``tracker`` no longer trusts ``name`` (Redis's message arrived); fails after 5 s."""
    started = time.monotonic()
    while tracker.known([name]) is not None:
        assert time.monotonic() - started < 5, f"{name} still trusted"
        time.sleep(0.0005)
    return time.monotonic() - started


def test_a_version_read_once_is_known_until_another_connection_changes_it(tracker: VersionTracker) -> None:
    client = redis_client.get()
    client.set("cv:{a}", 3)
    assert tracker.known(["cv:{a}"]) is None  # never read
    assert _read(tracker, "cv:{a}") == [b"3"]
    assert tracker.known(["cv:{a}"]) == [3]
    client.incr("cv:{a}")  # another process's event
    assert _until_forgotten(tracker, "cv:{a}") < 1.0
    assert _read(tracker, "cv:{a}") == [b"4"]
    assert tracker.known(["cv:{a}"]) == [4]  # tracked again


def test_several_versions_are_known_only_all_together(tracker: VersionTracker) -> None:
    client = redis_client.get()
    client.set("cv:{c}", 1)
    assert _read(tracker, "cv:{c}", "cv:{s}") == [b"1", None]  # a session never seen: version 0
    assert tracker.known(["cv:{c}", "cv:{s}"]) == [1, 0]
    client.incr("cv:{s}")
    _until_forgotten(tracker, "cv:{s}")
    assert tracker.known(["cv:{c}", "cv:{s}"]) is None
    assert tracker.known(["cv:{c}"]) == [1]


def test_expiry_and_a_flush_are_changes_too(tracker: VersionTracker) -> None:
    client = redis_client.get()
    client.set("cv:{x}", 1, px=50)
    client.set("cv:{y}", 1)
    _read(tracker, "cv:{x}", "cv:{y}")
    time.sleep(0.1)
    client.get("cv:{x}")  # expired (Redis also expires it on its own within a second)
    _until_forgotten(tracker, "cv:{x}")
    assert tracker.known(["cv:{y}"]) == [1]
    client.flushdb()
    _until_forgotten(tracker, "cv:{y}")


def test_a_read_overtaken_by_an_invalidation_is_not_remembered(tracker: VersionTracker) -> None:
    # The race every client-side cache has: the value is read, another connection changes it, and its invalidation
    # arrives before the reply is handled. The stale reply must not be trusted afterwards.
    client = redis_client.get()
    client.set("cv:{race}", 1)
    ticket = tracker.begin(["cv:{race}"])
    pipe = client.pipeline(transaction=False)
    tracker.queue(pipe, ticket, ["cv:{race}"])
    replies = pipe.execute(raise_on_error=False)
    client.incr("cv:{race}")
    time.sleep(0.05)  # the invalidation is on the socket before the reply is handled
    assert tracker.finish(ticket, replies) == [b"1"]
    assert tracker.known(["cv:{race}"]) is None


def test_this_process_forgets_what_it_wrote_at_once(tracker: VersionTracker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "TRACKER", tracker)
    owner = "c:writer"
    _read(tracker, keys.cache_version(owner))
    assert tracker.known([keys.cache_version(owner)]) == [0]
    online.bump_cache_versions(owner for owner in [owner])  # an iterator, as the rebuild passes
    assert tracker.known([keys.cache_version(owner)]) is None  # no wait for Redis's message
    assert redis_client.get().get(keys.cache_version(owner)) == b"1"


def test_a_lost_invalidation_connection_drops_everything_and_a_new_one_takes_over(tracker: VersionTracker) -> None:
    client = redis_client.get()
    client.set("cv:{k}", 1)
    _read(tracker, "cv:{k}")
    assert tracker.known(["cv:{k}"]) == [1]
    client.client_kill_filter(_id=tracker._redirect)
    assert _until_forgotten(tracker, "cv:{k}") < 1.0  # nothing is trusted while nobody listens
    assert _read(tracker, "cv:{k}") == [b"1"]  # a new connection, a new redirect id
    client.incr("cv:{k}")
    _until_forgotten(tracker, "cv:{k}")  # and its invalidations arrive


def test_a_version_older_than_max_age_is_read_again(tracker: VersionTracker) -> None:
    tracker = VersionTracker(max_age=0.05)
    try:
        _read(tracker, "cv:{old}")
        assert tracker.known(["cv:{old}"]) == [0]
        time.sleep(0.1)
        assert tracker.known(["cv:{old}"]) is None
    finally:
        tracker.clear()


def test_switched_off_nothing_is_tracked() -> None:
    with override_settings(REDIS_VERSION_TRACKING=False):
        tracker = VersionTracker(max_age=30.0)
        assert tracker.begin(["cv:{off}"]) is None
        pipe = redis_client.get().pipeline(transaction=False)
        tracker.queue(pipe, None, ["cv:{off}"])
        assert tracker.finish(None, pipe.execute()) == [None]
        assert tracker.known(["cv:{off}"]) is None


def test_a_redis_that_refuses_tracking_gets_round_trips(tracker: VersionTracker) -> None:
    # A managed Redis may deny CLIENT to the application's user: the process reads versions every time, as with
    # REDIS_VERSION_TRACKING=0, instead of failing or retrying on every request.
    admin = redis_client.get()
    admin.acl_setuser(
        "no-tracking", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"], commands=["+@all", "-client"]
    )
    parts = urlsplit(settings.REDIS_DATA_URL)
    url = urlunsplit(parts._replace(netloc=f"no-tracking:secret@{parts.hostname}:{parts.port}"))
    try:
        with override_settings(REDIS_DATA_URL=url):
            redis_client.reset()
            assert tracker.begin(["cv:{acl}"]) is None
            assert tracker.begin(["cv:{acl}"]) is None  # said once, not tried again
            pipe = redis_client.get().pipeline(transaction=False)
            tracker.queue(pipe, None, ["cv:{acl}"])
            assert tracker.finish(None, pipe.execute()) == [None]
            assert tracker.known(["cv:{acl}"]) is None
    finally:
        redis_client.reset()
        admin.acl_deluser("no-tracking")


@pytest.mark.skipif(not settings.REDIS_CLUSTER, reason="on a Redis Cluster only")
def test_a_cluster_keeps_the_round_trip() -> None:
    # Tracking is per node and a version's invalidation would come from whichever master holds it: not done.
    assert not VersionTracker.enabled()
    assert tracking.TRACKER.begin(["cv:{x}"]) is None
    assert tracking.TRACKER.known(["cv:{x}"]) is None


def test_a_quiet_connection_is_pinged_and_dropped_when_it_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    # A NAT or firewall that forgets an idle flow leaves no FIN behind: the process asks, and stops trusting what it
    # read when the answer does not come.
    if not VersionTracker.enabled():
        pytest.skip("a Redis Cluster never tracks versions")
    tracker = VersionTracker(max_age=30.0, ping_every=0.05, pong_within=0.1)
    try:
        _read(tracker, "cv:{quiet}")
        time.sleep(0.1)
        assert tracker.known(["cv:{quiet}"]) == [0]  # quiet for a while: a PING goes out
        time.sleep(0.05)
        assert tracker.known(["cv:{quiet}"]) == [0]  # answered: still trusted
        assert tracker._ping_sent is None
        conn = tracker._conn
        assert conn is not None
        monkeypatch.setattr(conn, "send_command", lambda *args, **kwargs: None)  # from now on nothing answers
        time.sleep(0.1)
        assert tracker.known(["cv:{quiet}"]) == [0]  # the PING (lost) just went out
        time.sleep(0.15)
        assert tracker.known(["cv:{quiet}"]) is None  # no answer within pong_within: nothing is trusted
        assert _read(tracker, "cv:{quiet}") == [None]  # and a new connection takes over
        assert tracker._conn is not conn
        assert tracker.known(["cv:{quiet}"]) == [0]
    finally:
        tracker.clear()
