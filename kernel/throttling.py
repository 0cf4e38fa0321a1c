"""Rate limits per API key, per customer, and per client address for requests without a valid key: fixed one-minute
windows, counted in each process and summed in Redis by a background thread, so they cost the request no round
trip and hold across every web process. A Redis outage neither takes the storefront down nor slows it: each process
goes on limiting with its own counts.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Collection
from typing import Any

import redis
from django.conf import settings
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.request import Empty, Request
from rest_framework.throttling import BaseThrottle

from kernel import redis_client
from kernel.api_keys import ApiClient
from kernel.background import Periodic
from kernel.models import ApiKey
from kernel.validation import ID_MAX_LENGTH

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_SYNC_INTERVAL_SECONDS = 0.1
_PAUSE_AFTER_FAILURE_SECONDS = 1.0
_MAX_KEYS = 200_000  # distinct counters one process tracks in a window (a flood of customer ids stays bounded)


class _SharedCounts:
    """This process's view of the shared per-window counters: what Redis last said each total was, plus the hits
    this process counted since and has not sent yet.

    A request is counted locally and decided at once; a background thread sends the pending hits (INCRBY, one
    pipeline) every ``_SYNC_INTERVAL_SECONDS`` and reads back the totals of every process. So the limit costs no
    round trip on the request path, one process alone is limited exactly, and the processes together can pass a
    limit by at most what the others counted in the last interval. With Redis unreachable each process goes on
    limiting with its own counts (the pending hits are sent once Redis is back).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = -1
        self._known: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        # Hits a sync is sending right now: still counted by hit() until Redis has answered with totals that include
        # them (without this, a request arriving during a slow or failing sync saw too low a count).
        self._sending: dict[str, int] = {}
        self._paused_until = 0.0
        self._sync_lock = threading.Lock()  # one sync at a time; reset() waits for a sync in flight
        self._loop = Periodic("throttle-sync", _SYNC_INTERVAL_SECONDS, self.sync)

    def hit(self, keys: list[str], window: int) -> list[int]:
        """Count one request on each key of ``window``; the totals as far as this process knows them."""
        with self._lock:
            if window != self._window:
                self._window, self._known, self._pending, self._sending = window, {}, {}, {}
            if len(self._known) > _MAX_KEYS:
                self._known = {}
            counts = []
            for key in keys:
                pending = self._pending.get(key, 0) + 1
                self._pending[key] = pending
                counts.append(self._known.get(key, 0) + self._sending.get(key, 0) + pending)
        self._loop.ensure()
        return counts

    def peek(self, keys: list[str], window: int) -> list[int]:
        """The totals of ``keys`` in ``window`` as far as this process knows them, counting nothing."""
        with self._lock:
            if window != self._window:
                return [0] * len(keys)
            return [self._known.get(key, 0) + self._sending.get(key, 0) + self._pending.get(key, 0) for key in keys]

    def sync(self) -> None:
        """Send the pending hits and learn the totals; on a Redis failure keep them for the next try."""
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        if time.monotonic() < self._paused_until:
            return
        with self._lock:
            window, pending, self._pending = self._window, self._pending, {}
            self._sending = pending
        if not pending:
            return
        try:
            pipe = redis_client.get().pipeline(transaction=False)
            for key, hits in pending.items():
                pipe.incrby(key, hits)
                pipe.expire(key, 2 * WINDOW_SECONDS)
            totals = pipe.execute()[::2]
        except redis.RedisError:
            self._paused_until = time.monotonic() + _PAUSE_AFTER_FAILURE_SECONDS
            logger.warning("throttle_unavailable", exc_info=True)
            with self._lock:
                if window == self._window:
                    self._sending = {}
                    for key, hits in pending.items():
                        self._pending[key] = self._pending.get(key, 0) + hits
            return
        with self._lock:
            if window == self._window:
                self._sending = {}
                self._known.update(zip(pending, (int(total) for total in totals), strict=True))

    def reset(self) -> None:
        with self._sync_lock, self._lock:
            self._window, self._known, self._pending, self._sending = -1, {}, {}, {}
        self._paused_until = 0.0


_counts = _SharedCounts()


def sync_now() -> None:
    """Send this process's pending hits to Redis and read back the shared totals now (tests, shutdown)."""
    _counts.sync()


def pause_clear() -> None:
    """Forget this process's counts and ask Redis again from the next request on (tests, once Redis is back)."""
    _counts.reset()


# Recommendation and event requests name a customer; the other endpoints are the storefront's back office.
CUSTOMER_SCOPES = frozenset({ApiKey.Scope.RECOMMEND, ApiKey.Scope.EVENTS})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ApiRateThrottle(BaseThrottle):
    """Both limits, decided in process (see ``_SharedCounts``: no Redis round trip on the request path):

    - at most the key's ``rate_per_minute`` (default ``API_DEFAULT_RATE_PER_MINUTE``) requests per API key;
    - at most ``API_CUSTOMER_RATE_PER_MINUTE`` requests per customer and API key, for the views whose scope is
      ``recommend`` or ``events``: one runaway page or bot behind a single customer cannot spend the key's whole
      budget.

    The customer comes from the URL (``customer_id``), the query string (``customer_id``) or the JSON body: a single
    event's ``customer_id``, or each customer of a batch (``events[*].customer_id``), every customer a request
    names counting that request once. Counted per request, not per event, so no batch the API accepts can be
    over the limit by itself and a 429 always clears after ``Retry-After``.

    Counters are keyed by a hash of the customer id, so the rate-limit keys hold no customer ids.
    """

    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: object) -> bool:
        client = request.user
        if not isinstance(client, ApiClient):
            return True
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        keys = [f"throttle:key:{client.key_id}:{window}"]
        if getattr(view, "required_scope", None) in CUSTOMER_SCOPES:
            keys += [
                f"throttle:cust:{client.key_id}:{window}:{_digest(customer)}"
                for customer in sorted(customers_named(request, view))
            ]
        counts = _counts.hit(keys, window)
        key_limit = client.rate_per_minute or settings.API_DEFAULT_RATE_PER_MINUTE
        if counts[0] > key_limit or max(counts[1:], default=0) > settings.API_CUSTOMER_RATE_PER_MINUTE:
            self._wait = (window + 1) * WINDOW_SECONDS - now
            return False
        return True

    def wait(self) -> float | None:
        return self._wait


class _AddressIdent(BaseThrottle):
    """DRF's client address (REMOTE_ADDR, or X-Forwarded-For behind ``NUM_PROXIES`` proxies)."""


_ident = _AddressIdent()


def unauthenticated_hit(request: Request, *, count: bool = True) -> float | None:
    """Count one request without a valid API key against its client address (when ``count``) and return how many
    seconds it must wait when the address is over ``API_UNAUTHENTICATED_RATE_PER_MINUTE``, else None. In process,
    like the other limits (no round trip, no database): kernel.auth calls it before looking a key up, so a flood
    of random keys costs no query once over the limit. Keyed by a hash of the address."""
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    key = f"throttle:addr:{window}:{_digest(_ident.get_ident(request) or '-')}"
    # Peeking asks whether this request would be over the limit if it were counted.
    (total,) = _counts.hit([key], window) if count else [n + 1 for n in _counts.peek([key], window)]
    if total > settings.API_UNAUTHENTICATED_RATE_PER_MINUTE:
        return (window + 1) * WINDOW_SECONDS - now
    return None


def _digest(customer_id: str) -> str:
    # surrogatepass: JSON may carry a lone surrogate, which plain UTF-8 cannot encode.
    return hashlib.blake2b(customer_id.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def customers_named(request: Request, view: object) -> set[str]:
    """The customer ids a request names, in the URL, the query string or the JSON body (one event or a batch).

    Ids that are not strings, blank or too long are skipped: validation rejects them, and they name nobody.
    """
    found: list[Any] = [
        getattr(view, "kwargs", {}).get("customer_id"),
        request.query_params.get("customer_id"),
    ]
    body = _json_body(request) if request.method in _BODY_METHODS else None
    if isinstance(body, dict):
        found.append(body.get("customer_id"))
        events = body.get("events")
        if isinstance(events, list):
            found.extend(event.get("customer_id") for event in events if isinstance(event, dict))
    return _valid_ids(found)


def _valid_ids(values: Collection[Any]) -> set[str]:
    return {
        value.strip()
        for value in values
        if isinstance(value, str) and value.strip() and len(value.strip()) <= ID_MAX_LENGTH
    }


def _json_body(request: Request) -> Any:
    """The parsed body, or None when it cannot be parsed; the view then meets (and reports) the error itself.

    DRF remembers a failed parse as an empty body, so the failure is forgotten here (its "not loaded yet" state,
    DRF 3.15-3.16) and the body kept readable: reading ``HttpRequest.body`` first makes DRF parse from that copy
    instead of the stream, and also applies ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (``RequestDataTooBig``, answered 413 by
    kernel.exceptions). tests/reliability/test_security.py checks that the view still reports a bad body itself.
    """
    request._request.body  # noqa: B018 - read for its side effects, see above
    try:
        return request.data
    except (ParseError, UnsupportedMediaType):
        for name in ("_data", "_files", "_full_data", "_stream"):
            setattr(request, name, Empty)
        return None
