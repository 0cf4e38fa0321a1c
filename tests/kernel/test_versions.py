"""kernel.versions on the real Redis: the bump helpers and the one per-process snapshot every serving cache uses."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from django.db import DatabaseError

from kernel import redis_client
from kernel.versions import VersionedSnapshot, bump, bump_on_commit, read_version

KEY = "test:versions:key"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """What the snapshot loads: a counter of loads, and a switch that makes the next loads fail like Postgres."""

    def __init__(self) -> None:
        self.loads = 0
        self.failing = False

    def __call__(self) -> int:
        if self.failing:
            raise DatabaseError("postgres is down")
        self.loads += 1
        return self.loads


class DownRedis:
    def get(self, *_: object) -> None:
        raise redis.ConnectionError("redis is down")


def _snapshot(source: Source, clock: Clock, causes: list[str], **kwargs: object) -> VersionedSnapshot[int]:
    options: dict[str, object] = {"check_seconds": 1.0, "max_age_seconds": 60.0} | kwargs
    return VersionedSnapshot(
        key=KEY,
        load=source,
        fallback=-1,
        clock=clock,
        on_reload=causes.append,
        **options,  # type: ignore[arg-type]
    )


def test_bump_moves_the_version_and_unique_never_repeats_a_value() -> None:
    assert read_version(KEY) == b"0"
    bump(KEY)
    bump(KEY)
    assert read_version(KEY) == b"2"
    bump(KEY, unique=True)
    first = read_version(KEY)
    bump(KEY, unique=True)
    assert first != read_version(KEY)
    assert len(read_version(KEY) or b"") == 32


@pytest.mark.django_db
def test_bump_on_commit_waits_for_the_commit(
    django_capture_on_commit_callbacks: Callable[..., object],
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:  # type: ignore[attr-defined]
        bump_on_commit(KEY)
        assert read_version(KEY) == b"0"  # not before the commit
    assert len(callbacks) == 1
    assert read_version(KEY) == b"1"


def test_read_version_is_none_when_redis_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_client, "get", lambda: DownRedis())
    assert read_version(KEY) is None


def test_reloads_when_the_version_moves_checked_at_most_every_interval() -> None:
    source, clock, causes = Source(), Clock(), []
    snapshot = _snapshot(source, clock, causes)
    assert snapshot.get() == 1
    bump(KEY)
    clock.now += 0.5
    assert snapshot.get() == 1  # within the check interval: the version is not read
    clock.now += 0.6
    assert snapshot.get() == 2
    clock.now += 1.1
    assert snapshot.get() == 2  # same version: no reload
    assert causes == ["cold", "version"]


def test_reloads_after_the_maximum_age_whatever_the_version() -> None:
    source, clock, causes = Source(), Clock(), []
    snapshot = _snapshot(source, clock, causes, max_age_seconds=10.0)
    assert snapshot.get() == 1
    clock.now += 11
    assert snapshot.get() == 2
    assert causes == ["cold", "max_age"]


def test_redis_down_reloads_at_every_check_or_keeps_the_value_by_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    reloading, keeping = Source(), Source()
    clock, causes_reloading, causes_keeping = Clock(), [], []
    snapshot = _snapshot(reloading, clock, causes_reloading)
    kept = _snapshot(keeping, clock, causes_keeping, reload_when_unknown=False)
    assert (snapshot.get(), kept.get()) == (1, 1)
    monkeypatch.setattr(redis_client, "get", lambda: DownRedis())
    clock.now += 1.1
    assert (snapshot.get(), kept.get()) == (2, 1)
    assert snapshot.token is None  # loaded while the version was unknown
    assert causes_reloading == ["cold", "redis_unavailable"]
    assert causes_keeping == ["cold"]


def test_postgres_down_keeps_the_last_value_or_answers_the_fallback() -> None:
    source, clock, causes = Source(), Clock(), []
    source.failing = True
    snapshot = _snapshot(source, clock, causes)
    assert snapshot.get() == -1  # nothing loaded yet: the fallback
    assert not snapshot.loaded
    source.failing = False
    clock.now += 1.1
    assert snapshot.get() == 1  # tried again at the next check
    bump(KEY)
    source.failing = True
    clock.now += 1.1
    assert snapshot.get() == 1  # the reload failed: the last value stays
    source.failing = False
    clock.now += 1.1
    assert snapshot.get() == 2
    assert causes == ["cold", "version"]


def test_clear_forgets_the_value() -> None:
    source, clock, causes = Source(), Clock(), []
    snapshot = _snapshot(source, clock, causes)
    assert snapshot.get() == 1
    snapshot.clear()
    assert snapshot.get() == 2
    assert causes == ["cold", "cold"]
