"""API keys: the authenticated caller (ApiClient), key creation and revocation."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from django.utils import timezone

from kernel.models import ApiKey

KEY_PREFIX = "rk_"


@dataclass(frozen=True)
class ApiClient:
    """The authenticated caller: what a view needs to know about the key, nothing more."""

    key_id: int
    name: str
    scopes: frozenset[str]
    rate_per_minute: int | None

    is_authenticated = True

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or ApiKey.Scope.ADMIN in self.scopes


def hash_key(plaintext: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(plaintext.encode()).hexdigest()


RATE_MAX = 2**31 - 1  # the column's range


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a key (it is shown in the admin and the logs), or None."""
    if not name.strip() or len(name) > 100 or not name.isprintable():
        return "the name must be 1 to 100 printable characters (who uses the key, e.g. 'storefront web')"
    return None


def api_key_create(
    *,
    name: str,
    scopes: Iterable[str],
    rate_per_minute: int | None = None,
    plaintext: str | None = None,
    created_by_id: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is shown once and never stored.

    ``plaintext`` lets the demo set-up re-create the same local key; anything else leaves it to us.
    """
    unknown = set(scopes) - set(ApiKey.Scope.values)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}; known: {', '.join(ApiKey.Scope.values)}")
    if rate_per_minute is not None and not 1 <= rate_per_minute <= RATE_MAX:
        raise ValueError(
            f"rate_per_minute must be from 1 to {RATE_MAX} (or unset for the server default), got {rate_per_minute}"
        )
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    if plaintext is None:
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        name=name,
        prefix=plaintext[: len(KEY_PREFIX) + 8],
        key_hash=hash_key(plaintext),
        scopes=sorted(set(scopes)),
        rate_per_minute=rate_per_minute,
        created_by_id=created_by_id,
    )
    return key, plaintext


def api_key_revoke(*, key_id: int) -> None:
    ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
