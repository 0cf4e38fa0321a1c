"""Version tokens in Redis and the per-process snapshots they keep current.

Serving keeps slowly changing data in process memory (opted-out ids, business rules, experiments, item attributes,
the model): one Redis round trip per check instead of one query per request. Every writer bumps a version key
after its transaction commits (:func:`bump_on_commit`), so a reload sees the change; every reader compares the
token at most every ``check_seconds`` (:func:`read_version`, :class:`VersionedSnapshot`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar, cast

import redis
from django.db import DatabaseError, transaction

from kernel import redis_client

logger = logging.getLogger(__name__)

T = TypeVar("T")


def bump(key: str, *, unique: bool = False) -> None:
    """Move the version at ``key`` now: INCR, or a fresh random token with ``unique`` (a key that may be deleted
    and must never come back to an old value). Best effort: Redis down is logged, and readers pick the change up
    at their maximum age or at every check while they cannot read the version."""
    try:
        client = redis_client.get()
        if unique:
            client.set(key, uuid.uuid4().hex)
        else:
            client.incr(key)
    except redis.RedisError:
        logger.warning("version_bump_failed", exc_info=True, extra={"key": key})


def bump_on_commit(key: str, *, unique: bool = False) -> None:
    """:func:`bump` once the current transaction commits (at once outside one): a reader that reloads on the new
    version must see the change."""
    transaction.on_commit(lambda: bump(key, unique=unique))


def read_version(key: str, *, default: bytes = b"0") -> bytes | None:
    """The token at ``key`` (``default`` when never bumped), or None when Redis cannot be read (unknown)."""
    try:
        return cast(bytes | None, redis_client.get().get(key)) or default
    except redis.RedisError:
        return None


class VersionedSnapshot(Generic[T]):
    """A value loaded from Postgres, kept per process and reloaded when the version at ``key`` moves.

    The version is checked at most every ``check_seconds``; the value is also reloaded after ``max_age_seconds``
    whatever the version. While the version cannot be read (Redis down) the value is reloaded at every check when
    ``reload_when_unknown``, else kept. One thread reloads while the others keep reading the current value; before
    the first load they wait for it. A failed load (Postgres down) keeps the last value; with none yet, ``get``
    answers ``fallback`` and the load is tried again at the next check. ``on_reload`` hears why each reload
    happened: ``cold``, ``version``, ``redis_unavailable`` or ``max_age``.
    """

    def __init__(
        self,
        *,
        key: str,
        load: Callable[[], T],
        fallback: T,
        check_seconds: float,
        max_age_seconds: float = math.inf,
        reload_when_unknown: bool = True,
        name: str = "snapshot",
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        self.key = key
        self.load = load
        self.fallback = fallback
        self.check_seconds = check_seconds
        self.max_age_seconds = max_age_seconds
        self.reload_when_unknown = reload_when_unknown
        self.name = name
        self.clock = clock
        self.on_reload = on_reload
        self._value: T | None = None
        self._loaded = False
        self._token: bytes | None = None
        self._checked = -math.inf
        self._loaded_at = -math.inf
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def token(self) -> bytes | None:
        """The version the current value was loaded at (None: unknown, or nothing loaded yet)."""
        self.get()
        return self._token

    def get(self) -> T:
        now = self.clock()
        if now - self._checked >= self.check_seconds and self._lock.acquire(blocking=not self._loaded):
            try:
                if now - self._checked >= self.check_seconds:  # another thread may have just refreshed
                    self._refresh(now)
            finally:
                self._lock.release()
        return cast(T, self._value) if self._loaded else self.fallback

    def _refresh(self, now: float) -> None:
        self._checked = now
        token = read_version(self.key)
        if not self._loaded:
            cause = "cold"
        elif token is None:
            if not self.reload_when_unknown:
                return
            cause = "redis_unavailable"
        elif token != self._token:
            cause = "version"
        elif now - self._loaded_at >= self.max_age_seconds:
            cause = "max_age"
        else:
            return
        try:
            value = self.load()
        except DatabaseError:
            logger.warning(f"{self.name}_reload_failed", exc_info=True)
            return
        self._value, self._loaded = value, True
        self._token, self._loaded_at = token, now
        if self.on_reload is not None:
            self.on_reload(cause)

    def clear(self) -> None:
        """Forget the value: the next ``get`` loads it again (tests; after a change in this process)."""
        with self._lock:
            self._value, self._loaded, self._token = None, False, None
            self._checked = self._loaded_at = -math.inf
