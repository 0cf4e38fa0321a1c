"""Two-tier cache for computed recommendation lists: an in-process LRU (L1) in front of Redis (L2).

Keys always contain the owner (customer or session) and the owner's cache version, which every accepted event
bumps, so a list is never shown to someone else and never outlives the event that changed it. TTLs carry ±10%
jitter so entries written together do not expire together; concurrent misses for one key compute once
(single-flight: a thread lock within the process, a short Redis lock across processes). Redis trouble degrades
to computing every time, never to an error.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from cachetools import TLRUCache
from prometheus_client import Counter

from recsys import redis_client

logger = logging.getLogger(__name__)

CACHE_REQUESTS = Counter("recsys_recommendation_cache_total", "Recommendation cache lookups by outcome.", ["result"])

_LOCK_MS = 2_000  # longest a computation may hold the cross-process lock
_WAIT_FOR_PEER_S = 0.25  # how long a loser waits for the winner's value before computing itself


class ListCache:
    def __init__(self, *, ttl_seconds: float = 60.0, l1_size: int = 20_000, jitter: float = 0.1) -> None:
        self.ttl = ttl_seconds
        self.jitter = jitter
        self._l1: TLRUCache[str, Any] = TLRUCache(maxsize=l1_size, ttu=self._expiry, timer=time.monotonic)
        self._l1_lock = threading.Lock()
        self._inflight: dict[str, threading.Lock] = {}
        self._inflight_lock = threading.Lock()

    def _jittered(self) -> float:
        return self.ttl * random.uniform(1 - self.jitter, 1 + self.jitter)

    def _expiry(self, key: str, value: Any, now: float) -> float:
        return now + self._jittered()

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> tuple[Any, str]:
        """The cached value for ``key`` or the result of ``compute()`` (JSON-serialisable), and where it came
        from: ``"l1"``, ``"l2"`` or ``"miss"``."""
        with self._l1_lock:
            value = self._l1.get(key)
        if value is not None:
            CACHE_REQUESTS.labels("l1_hit").inc()
            return value, "l1"
        with self._inflight_lock:
            lock = self._inflight.setdefault(key, threading.Lock())
        with lock:  # threads of this process asking for the same key wait for the first one
            try:
                with self._l1_lock:
                    value = self._l1.get(key)
                if value is not None:
                    CACHE_REQUESTS.labels("l1_hit").inc()
                    return value, "l1"
                value = self._l2_get(key)
                if value is not None:
                    CACHE_REQUESTS.labels("l2_hit").inc()
                    self._l1_set(key, value)
                    return value, "l2"
                value = self._compute_once_across_processes(key, compute)
                CACHE_REQUESTS.labels("miss").inc()
                return value, "miss"
            finally:
                with self._inflight_lock:
                    self._inflight.pop(key, None)

    def _compute_once_across_processes(self, key: str, compute: Callable[[], Any]) -> Any:
        client = redis_client.get()
        lock_key = f"lock:{key}"
        try:
            won = bool(client.set(lock_key, b"1", nx=True, px=_LOCK_MS))
        except redis.RedisError:
            won = True  # no Redis: nobody to coordinate with
        if not won:
            deadline = time.monotonic() + _WAIT_FOR_PEER_S
            while time.monotonic() < deadline:
                time.sleep(0.005)
                value = self._l2_get(key)
                if value is not None:
                    self._l1_set(key, value)
                    return value
        try:
            value = compute()
            self._l1_set(key, value)
            self._l2_set(key, value)
            return value
        finally:
            if won:
                try:
                    client.delete(lock_key)
                except redis.RedisError:
                    pass

    def _l1_set(self, key: str, value: Any) -> None:
        with self._l1_lock:
            self._l1[key] = value

    def _l2_get(self, key: str) -> Any:
        try:
            raw = redis_client.get().get(key)
        except redis.RedisError:
            logger.warning("recommendation_cache_unavailable", exc_info=True)
            return None
        return json.loads(raw) if raw is not None else None

    def _l2_set(self, key: str, value: Any) -> None:
        try:
            redis_client.get().set(key, json.dumps(value, separators=(",", ":")), ex=max(1, round(self._jittered())))
        except redis.RedisError:
            logger.warning("recommendation_cache_unavailable", exc_info=True)

    def clear_local(self) -> None:
        with self._l1_lock:
            self._l1.clear()
