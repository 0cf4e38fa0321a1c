"""Two-tier cache for computed recommendation lists: an in-process LRU (L1) in front of Redis (L2).

Lists of a customer or session are cached under their owner and checked against the owner's cache version,
which every accepted event bumps, so a list is never shown to someone else and never outlives the event that
changed it. TTLs carry ±10% jitter so entries written together do not expire together; concurrent misses for one
key compute once (single-flight: a thread lock within the process, a short Redis lock across processes).

Round trips, because they are most of a cached request's cost. A key this process holds a list for is most likely a
hit: its lookup reads the owners' versions alone, and not even that while Redis has not said they changed (they are
read under client tracking, ``kernel.tracking``: a hit then costs no round trip; without tracking, one of a few
bytes; a list without owners, none). A key it holds no list for, under any version, is most likely a miss (a new
owner, other exclusions, a new model), so its lookup also reads the L2 entry, claims the cross-process lock and
reads whatever the computation will need from Redis (``prefetch``): such a miss waits for one round trip, not two (a
list held under an older version reads the entry, claims and reads in a second one). Storing the value and releasing
the lock is the last round trip, and within a web request it is off the client's clock: the value is in L1 at once,
and the store waits for the end of the request (Django's ``request_finished``, which gunicorn sends once the
response is written), where every store the request queued goes in one pipeline, with the release of a lock claimed
for a list that was found after all. Outside a request (tasks, commands) a miss stores at once. Redis trouble
degrades to computing every time, never to an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from cachetools import TLRUCache
from django.core.signals import request_finished, request_started
from prometheus_client import Counter
from redis.client import Pipeline

from kernel import redis_client, tracking

logger = logging.getLogger(__name__)

CACHE_REQUESTS = Counter("recsys_recommendation_cache_total", "Recommendation cache lookups by outcome.", ["result"])
# Each outcome's child, resolved once (labels() is a few µs on every request's path).
_OUTCOME = {result: CACHE_REQUESTS.labels(result) for result in ("l1_hit", "l2_hit", "miss")}

_LOCK_MS = 2_000  # longest a computation may hold the cross-process lock
_WAIT_FOR_PEER_S = 0.25  # how long a loser waits for the winner's value before computing itself


@dataclass(frozen=True, slots=True)
class Prefetched:
    """The replies of the commands ``prefetch`` queued, and how long their round trip took (the computation's
    trace counts it as the work it read for)."""

    replies: Sequence[Any]
    seconds: float


# ``compute`` gets what ``prefetch`` queued (None when it could not be read, or nothing was queued).
Compute = Callable[[Prefetched | None], Any]

Prefetch = Callable[[Pipeline], None]


def _dumps(value: Any) -> bytes:
    # orjson: several times faster than the json module on these lists, in both directions.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


# Every list cache of this process, whose queued stores the end of a request writes.
_instances: weakref.WeakSet[ListCache] = weakref.WeakSet()
_request = threading.local()  # .active: this thread is serving a web request


def _request_began(**_: Any) -> None:
    _request.active = True


def _request_ended(**_: Any) -> None:
    """Store what the request's misses computed, once the response is written (gunicorn sends the signal after the
    last byte; the test client before returning)."""
    _request.active = False
    for cache in list(_instances):
        if cache._stores:
            cache.flush()


request_started.connect(_request_began, dispatch_uid="ranking.cache.request_began")
request_finished.connect(_request_ended, dispatch_uid="ranking.cache.request_ended")


def _new_process_tokens() -> None:
    """A forked process (gunicorn's workers fork from a master that imported this module) is another process to
    the cross-process lock: it takes locks under a token of its own."""
    for cache in list(_instances):
        cache._token = uuid.uuid4().hex.encode()


os.register_at_fork(after_in_child=_new_process_tokens)


@dataclass(frozen=True, slots=True)
class _Lookup:
    """What a round trip of a lookup read: the owners' version; and, when it claimed the cross-process lock
    (``claimed``: the L2 entry is read with the claim), the entry, whether this process holds the lock and what
    ``prefetch`` read."""

    version: int | str
    raw: bytes | None = None
    claimed: bool = False
    ours: bool = False  # the lock is this process's (this thread's, or another thread of this process's)
    taken_here: bool = False  # this very call set the lock (it releases it unless it stores a value)
    prefetched: Prefetched | None = None


_NO_REDIS = {"claimed": True, "ours": True}  # nobody to coordinate with, nothing read


class ListCache:
    def __init__(self, *, ttl_seconds: float = 60.0, l1_size: int = 20_000, jitter: float = 0.1) -> None:
        self.ttl = ttl_seconds
        self.jitter = jitter
        # L1: key -> (the owners' version it was computed under, its JSON); a newer version replaces the entry.
        self._l1: TLRUCache[str, tuple[int | str, bytes]] = TLRUCache(
            maxsize=l1_size, ttu=self._expiry, timer=time.monotonic
        )
        self._l1_lock = threading.Lock()
        self._inflight: dict[str, threading.Lock] = {}
        self._inflight_lock = threading.Lock()
        # Stores queued by misses within a request, written when it ends: (key, L2 entry or None for a lock release
        # alone, TTL seconds, lock key to release or None).
        self._stores: list[tuple[str, bytes | None, int, str | None]] = []
        self._stores_lock = threading.Lock()
        # The value of the cross-process locks this process takes (a new one after a fork): a thread that finds the
        # lock taken by a sibling thread waits on the in-process lock, not for another process's value.
        self._token = uuid.uuid4().hex.encode()
        _instances.add(self)

    def _jittered(self) -> float:
        return self.ttl * random.uniform(1 - self.jitter, 1 + self.jitter)

    def _expiry(self, key: str, value: Any, now: float) -> float:
        return now + self._jittered()

    def get_or_compute(
        self,
        key: str,
        compute: Compute,
        *,
        version_key: str | Sequence[str] | None = None,
        prefetch: Prefetch | None = None,
    ) -> tuple[Any, str]:
        """The cached value for ``key`` or the result of ``compute(prefetched)`` (JSON-serialisable), and where it
        came from: ``"l1"``, ``"l2"`` or ``"miss"``.

        ``version_key`` names the Redis counter the value depends on (the owner's cache version), or several (a
        customer and their anonymous session), all read in the same round trip: a value cached under another
        version is never returned. Raises ``redis.RedisError`` when that version cannot be read,
        since then no cached value can be trusted; the caller decides what to serve.
        """
        # A key this process holds a list for is most likely a hit: its lookup reads the owners' versions alone (and
        # a list without owners needs no round trip at all). A key it holds nothing for is most likely a miss (a new
        # owner, other exclusions, a new model): its lookup also reads the L2 entry, claims the cross-process lock
        # and reads what the computation needs, so such a miss waits for one round trip, not two. A list found
        # after all (in L2, or computed by another thread meanwhile) gives the lock back with the request's stores.
        held = self._l1_held(key)
        looked = self._lookup(key, version_key, prefetch, hit_likely=held is not None)
        version = looked.version
        if held is not None and held[0] == version:
            _OUTCOME["l1_hit"].inc()
            return orjson.loads(held[1]), "l1"
        local_key = f"{key}#{version}"
        with self._inflight_lock:
            lock = self._inflight.setdefault(local_key, threading.Lock())
        with lock:  # threads of this process asking for the same key wait for the first one
            try:
                value = self._l1_get(key, version)
                if value is not None:
                    self._release_unused(key, looked)
                    _OUTCOME["l1_hit"].inc()
                    return value, "l1"
                if not looked.claimed:  # held under an older version: the entry, the lock and the reads now
                    looked = self._claim_now(key, version, prefetch)
                value = self._decode(looked.raw, version)
                if value is not None:
                    self._release_unused(key, looked)
                    _OUTCOME["l2_hit"].inc()
                    self._l1_set(key, version, _dumps(value))
                    return value, "l2"
                value, tier, encoded = self._compute_once_across_processes(key, version, compute, looked)
                self._l1_set(key, version, encoded)
                _OUTCOME["miss" if tier == "miss" else "l2_hit"].inc()
                return value, tier
            finally:
                with self._inflight_lock:
                    self._inflight.pop(local_key, None)

    def _claim(self, pipe: Pipeline, key: str, prefetch: Prefetch | None) -> None:
        """Queue the read of the L2 entry, the lock claim (set it if free, then read who holds it) and the
        computation's reads."""
        lock_key = _lock_key(key)
        pipe.get(key)
        pipe.set(lock_key, self._token, nx=True, px=_LOCK_MS)
        pipe.get(lock_key)
        if prefetch is not None:
            prefetch(pipe)

    def _claimed(
        self, version: int | str, replies: Sequence[Any], seconds: float, prefetch: Prefetch | None
    ) -> _Lookup:
        raw, taken, holder, *read = replies
        return _Lookup(
            version, raw, claimed=True, ours=holder == self._token, taken_here=bool(taken),
            prefetched=Prefetched(read, seconds) if prefetch is not None else None,
        )  # fmt: skip

    def _lookup(
        self, key: str, version_key: str | Sequence[str] | None, prefetch: Prefetch | None, *, hit_likely: bool
    ) -> _Lookup:
        """The current version, and unless ``hit_likely`` the L2 entry, the lock claim and the reads, in one round
        trip."""
        version_keys = (version_key,) if isinstance(version_key, str) else tuple(version_key or ())
        if hit_likely:
            if not version_keys:
                return _Lookup(0)
            known = tracking.TRACKER.known(version_keys)  # versions Redis has not said changed: no round trip
            if known is not None:
                return _Lookup(_version_of(known))
        ticket = tracking.TRACKER.begin(version_keys)
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            tracking.TRACKER.queue(pipe, ticket, version_keys)
            if not hit_likely:
                self._claim(pipe, key, prefetch)
            started = time.perf_counter()
            replies = tracking.TRACKER.finish(ticket, pipe.execute(raise_on_error=ticket is None))
            seconds = time.perf_counter() - started
        except redis.RedisError:
            if version_keys:
                raise
            logger.warning("recommendation_cache_unavailable", exc_info=True)
            return _Lookup(0, **_NO_REDIS)
        n = len(version_keys)
        version = _version_of([int(reply or 0) for reply in replies[:n]])
        return _Lookup(version) if hit_likely else self._claimed(version, replies[n:], seconds, prefetch)

    def _claim_now(self, key: str, version: int | str, prefetch: Prefetch | None) -> _Lookup:
        """The L2 entry, the lock claim and the reads, in a round trip of their own."""
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            self._claim(pipe, key, prefetch)
            started = time.perf_counter()
            replies = pipe.execute()
        except redis.RedisError:
            logger.warning("recommendation_cache_unavailable", exc_info=True)
            return _Lookup(version, **_NO_REDIS)
        return self._claimed(version, replies, time.perf_counter() - started, prefetch)

    def _release_unused(self, key: str, looked: _Lookup) -> None:
        """A lock this call took and then did not need: released with the request's stores (at once outside one)."""
        if looked.taken_here:
            self._queue_store((key, None, 0, _lock_key(key)))

    @staticmethod
    def _decode(raw: bytes | None, version: int | str) -> Any:
        if raw is None:
            return None
        try:
            entry = orjson.loads(raw)
        except ValueError:  # not ours (or from another release): a miss, never an error
            return None
        if not isinstance(entry, dict) or entry.get("v") != version:
            return None
        return entry.get("d")

    def _compute_once_across_processes(
        self, key: str, version: int | str, compute: Compute, looked: _Lookup
    ) -> tuple[Any, str, bytes]:
        """(value, "miss", its JSON) when computed here, (value, "l2", its JSON) when another process computed it
        meanwhile."""
        lock_key = _lock_key(key)
        if not looked.ours:
            # Another process is computing: wait for its value, or until it lets go of the lock (it stored a value
            # for another version, or failed), then compute here.
            deadline = time.monotonic() + _WAIT_FOR_PEER_S
            while time.monotonic() < deadline:
                time.sleep(0.005)
                raw, held = self._peek(key, lock_key)
                value = self._decode(raw, version)
                if value is not None:
                    return value, "l2", _dumps(value)
                if not held:
                    break
        try:
            value = compute(looked.prefetched)
        except BaseException:
            if looked.ours:
                self._release(lock_key)
            raise
        encoded = _dumps(value)  # once, for both tiers
        entry = self._entry(encoded, version)
        self._queue_store((key, entry, max(1, round(self._jittered())), lock_key if looked.ours else None))
        return value, "miss", encoded

    def _queue_store(self, store: tuple[str, bytes | None, int, str | None]) -> None:
        with self._stores_lock:
            self._stores.append(store)
        if not getattr(_request, "active", False):
            self.flush()

    def flush(self) -> None:
        """Write the queued stores (and release their locks) in one pipeline; a failure is logged, and the entry is
        simply not shared."""
        with self._stores_lock:
            stores, self._stores = self._stores, []
        if not stores:
            return
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            for key, entry, ttl, lock_key in stores:
                if entry is not None:
                    pipe.set(key, entry, ex=ttl)
                if lock_key is not None:
                    pipe.delete(lock_key)
            pipe.execute()
        except redis.RedisError:
            logger.warning("recommendation_cache_unavailable", exc_info=True, extra={"stores": len(stores)})

    @staticmethod
    def _entry(encoded: bytes, version: int | str) -> bytes:
        """The L2 entry ``{"v": version, "d": value}`` around the value's JSON."""
        return b'{"v":%b,"d":%b}' % (_dumps(version), encoded)

    @staticmethod
    def _release(lock_key: str) -> None:
        try:
            redis_client.get().delete(lock_key)
        except redis.RedisError:
            pass

    # L1 holds each list as its JSON text, one object that the garbage collector does not track: twenty thousand
    # lists as dicts are about a million tracked objects, and a full collection over them stalled a worker for
    # 100-300 ms (the serving bench's p99). Decoding one on a hit costs a few µs (orjson).
    def _l1_held(self, key: str) -> tuple[int | str, bytes] | None:
        """(the version, the JSON) of the list L1 holds for ``key``, None when it holds none."""
        with self._l1_lock:
            return self._l1.get(key)

    def _l1_get(self, key: str, version: int | str) -> Any:
        held = self._l1_held(key)
        return orjson.loads(held[1]) if held is not None and held[0] == version else None

    def _l1_set(self, key: str, version: int | str, encoded: bytes) -> None:
        with self._l1_lock:
            self._l1[key] = (version, encoded)

    @staticmethod
    def _peek(key: str, lock_key: str) -> tuple[bytes | None, bool]:
        """The L2 entry and whether the lock is still held, in one round trip ((None, False) without Redis)."""
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            pipe.get(key)
            pipe.exists(lock_key)
            raw, held = pipe.execute()
        except redis.RedisError:
            logger.warning("recommendation_cache_unavailable", exc_info=True)
            return None, False
        return raw, bool(held)

    def clear_local(self) -> None:
        with self._l1_lock:
            self._l1.clear()


def _version_of(values: Sequence[int]) -> int | str:
    """The version a list is cached under: its owner's counter, or the counters of its owners joined (0: none)."""
    if len(values) > 1:
        return ".".join(str(value) for value in values)
    return values[0] if values else 0


def _lock_key(key: str) -> str:
    """The single-flight lock of a cached list, across processes (whatever the owners' version: a process computing
    for an older version holds it until it stores, which its waiters see)."""
    return f"lock:{key}"


# --- Key forms, for erasure -------------------------------------------------------------------------------------

# A list's key is ``rec:<surface>:<owners>:<digest>``. ``<owners>`` is the owner alone, or the customer's owner and
# the anonymous session's joined by OWNER_SEPARATOR (``<customer>|s%3A<session>``): a request naming both reads both
# histories, and the entry is valid only under the versions of all its owners (``version_key``). Owners stand in the
# key percent-encoded (``owner_key_part``), since ids are free text: a customer ``a:7`` must not be able to spell the
# key of customer ``a``'s list with other parameters, nor a customer ``a|s:b`` that of ``a`` with session ``b``.
# Everything else that shapes the list (count, category, exclusions, variant, config, model, rules, ...) is one
# digest of its ``repr``, where no two parameter sets can read alike (``None`` is not ``"-"``).
OWNER_SEPARATOR = "|"
_SCAN_COUNT = 1000
_KEY_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "|": "%7C"})


def owner_key_part(owner: str) -> str:
    """``owner`` as it stands in a list's key: the key's separators (and ``%``) percent-encoded."""
    return owner.translate(_KEY_ESCAPES)


def list_key(surface: str, owners: Sequence[str], shape: tuple[object, ...]) -> str:
    """The cache key of a list of ``surface`` for ``owners`` (none: the same list for every anonymous visitor),
    whatever else shapes it in ``shape`` (plain values: their ``repr`` is digested)."""
    digest = hashlib.blake2b(repr(shape).encode(), digest_size=12).hexdigest()
    parts = OWNER_SEPARATOR.join(owner_key_part(owner) for owner in owners)
    return f"rec:{owner_key_part(surface)}:{parts}:{digest}"


def _glob_escape(value: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in value)


def owner_entry_patterns(owner: str) -> tuple[str, ...]:
    """SCAN patterns matching every cached list keyed with ``owner``, alone or beside another owner (the surface is
    an escaped slug, so ``*`` there spans no owner field)."""
    owner = _glob_escape(owner_key_part(owner))
    return (
        f"rec:*:{owner}:*",
        f"rec:*:{owner}{OWNER_SEPARATOR}*",
        f"rec:*{OWNER_SEPARATOR}{owner}:*",
    )


def owner_entries_delete(owner: str) -> int:
    """Delete every cached list of ``owner`` in every key form (SCAN, UNLINK in batches); returns how many. Callers
    also bump the owner's cache version, which makes every form unreachable at once, in every process's L1 too
    (this deletion frees the memory and leaves nothing naming the owner). Raises ``redis.RedisError``."""
    for cache in list(_instances):  # a list this request computed and has not stored yet must not land afterwards
        cache.flush()
    client = redis_client.get()
    found: set[bytes] = set()
    for pattern in owner_entry_patterns(owner):
        found.update(client.scan_iter(match=pattern, count=_SCAN_COUNT))
    keys = sorted(found)
    deleted = 0
    for start in range(0, len(keys), _SCAN_COUNT):
        deleted += client.unlink(*keys[start : start + _SCAN_COUNT])
    return deleted
