"""API authentication: ``Authorization: Bearer <key>`` checked against hashed keys, and scope permissions."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from kernel.api_keys import ApiClient, hash_key
from kernel.models import ApiKey
from kernel.throttling import unauthenticated_hit

logger = logging.getLogger(__name__)

# A revoked key stops working within this many seconds on every process; it saves a query on every request.
_CACHE_SECONDS = 5.0
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class _Verified:
    verified_at: float  # monotonic time Postgres last answered for this key
    checked_at: float  # monotonic time of the last attempt to ask it
    client: ApiClient | None  # None: no such key, or revoked


_cache: dict[str, _Verified] = {}
_cache_lock = threading.Lock()
_last_touch: dict[int, float] = {}


def _lookup(key_hash: str) -> ApiClient | None:
    """The key's client from the in-process cache, asking Postgres when the entry is older than ``_CACHE_SECONDS``.

    When Postgres cannot answer, the last verification is used for up to ``API_KEY_STALE_SECONDS``, so an outage
    does not take down the endpoints that can still answer from memory (the recommendation endpoints); the price is
    that a key revoked just before or during an outage keeps working that much longer. Postgres is asked again at
    most once per ``_CACHE_SECONDS`` per key meanwhile, not on every request (each attempt may wait out the connect
    timeout). A key this process never verified, or verified too long ago, raises the ``DatabaseError`` (503).
    """
    now = time.monotonic()
    cached = _cache.get(key_hash)
    if cached and now - cached.checked_at < _CACHE_SECONDS:
        return cached.client
    try:
        row = (
            ApiKey.objects.filter(key_hash=key_hash, revoked_at__isnull=True)
            .values("id", "name", "scopes", "rate_per_minute")
            .first()
        )
    except DatabaseError:
        if cached is None or now - cached.verified_at > settings.API_KEY_STALE_SECONDS:
            raise
        logger.warning(
            "api_key_checked_from_memory",
            extra={"key_id": cached.client.key_id if cached.client else None,
                   "age_seconds": round(now - cached.verified_at, 1)},
        )  # fmt: skip
        with _cache_lock:
            _cache[key_hash] = _Verified(cached.verified_at, now, cached.client)
        return cached.client
    client = ApiClient(row["id"], row["name"], frozenset(row["scopes"]), row["rate_per_minute"]) if row else None
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[key_hash] = _Verified(now, now, client)
    return client


def _touch(client: ApiClient) -> None:
    """Record last use at most once a minute per key and process, so auth adds no write per request.

    Best effort: last use is bookkeeping, so a failed write (Postgres down, the row locked past the statement
    timeout) is logged and retried a minute later, never the request's failure."""
    now = time.monotonic()
    if now - _last_touch.get(client.key_id, -1e9) < _LAST_USED_RESOLUTION.total_seconds():
        return
    _last_touch[client.key_id] = now
    try:
        ApiKey.objects.filter(pk=client.key_id).update(last_used_at=timezone.now())
    except DatabaseError:
        logger.warning("api_key_last_used_not_recorded", extra={"key_id": client.key_id}, exc_info=True)


def _refuse_if_over(request: Request, *, count: bool) -> None:
    wait = unauthenticated_hit(request, count=count)
    if wait is not None:
        raise exceptions.Throttled(wait=wait, detail="Too many requests without a valid API key from this address.")


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
    _last_touch.clear()


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiClient] | None:
        """The key's client. Requests without a valid key (none, malformed, unknown or revoked) count against their
        client address (kernel.throttling.unauthenticated_hit): over the limit they are answered 429 before any
        lookup, so neither a flood of missing keys nor one of random keys reaches the database."""
        header = get_authorization_header(request).split()
        if not header:
            _refuse_if_over(request, count=True)
            return None
        if header[0].lower() != self.keyword.lower().encode() or len(header) != 2:
            _refuse_if_over(request, count=True)
            raise exceptions.AuthenticationFailed("Use the header 'Authorization: Bearer <api key>'.")
        try:
            plaintext = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            _refuse_if_over(request, count=True)
            raise exceptions.AuthenticationFailed("The API key contains invalid characters.") from exc
        key_hash = hash_key(plaintext)
        cached = _cache.get(key_hash)
        if cached is None or cached.client is None:
            # A key this process does not know to be valid: an address over its budget is not looked up.
            _refuse_if_over(request, count=False)
        client = _lookup(key_hash)
        if client is None:
            _refuse_if_over(request, count=True)
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        _touch(client)
        return client, client

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a missing key.
        return f'{self.keyword} realm="api"'


class HasScope(BasePermission):
    """The view's ``required_scope`` must be among the key's scopes (``admin`` implies all)."""

    message = "This API key lacks the required scope."

    def has_permission(self, request: Request, view: object) -> bool:
        client = request.user
        if not isinstance(client, ApiClient):
            return False
        scope = getattr(view, "required_scope", ApiKey.Scope.ADMIN)
        if client.has_scope(scope):
            return True
        self.message = f"This API key lacks the '{scope}' scope."
        return False


def request_has_scope(request: Request, scope: str) -> bool:
    return isinstance(request.user, ApiClient) and request.user.has_scope(scope)
