"""Merchandising rules as the serving path sees them: every enabled rule, cached in each process and reloaded
only when the rules version in Redis changes (checked at most once a second), then filtered per request by
surface and schedule. Rule changes go through :func:`ranking.services.business_rule_save`, which bumps the version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import redis
from django.db import DatabaseError

from kernel import redis_client
from ranking import rerank as rr

logger = logging.getLogger(__name__)

VERSION_KEY = "rules:version"
_CHECK_EVERY = 1.0


@dataclass(frozen=True)
class _StoredRule:
    rule: rr.Rule
    surfaces: frozenset[str]
    starts_at: float | None
    ends_at: float | None

    def applies(self, surface: str, now: float) -> bool:
        if self.surfaces and surface not in self.surfaces:
            return False
        if self.starts_at is not None and now < self.starts_at:
            return False
        return self.ends_at is None or now < self.ends_at


class _Snapshot:
    def __init__(self) -> None:
        self.token = "none"  # noqa: S105 - a version token, not a secret
        self.rules: tuple[_StoredRule, ...] = ()
        self.edges = np.empty(0)  # every rule's starts_at and ends_at, sorted
        self.checked = 0.0
        self.loaded = False
        self.lock = threading.Lock()

    def refresh(self) -> None:
        now = time.monotonic()
        if self.loaded and now - self.checked < _CHECK_EVERY:
            return
        with self.lock:
            if self.loaded and now - self.checked < _CHECK_EVERY:
                return
            self.checked = now
            try:
                token = (redis_client.get().get(VERSION_KEY) or b"0").decode()
            except redis.RedisError:
                token = self.token if self.loaded else "unknown"  # noqa: S105
            if self.loaded and token == self.token:
                return
            try:
                loaded = _load()
                self.edges = np.unique(
                    [edge for stored in loaded for edge in (stored.starts_at, stored.ends_at) if edge is not None]
                )
                self.rules = loaded
            except DatabaseError:
                # Keep serving the rules we have: a Postgres hiccup must not drop every pin and block.
                logger.warning("rules_reload_failed", exc_info=True)
                return
            self.token = token
            self.loaded = True


_snapshot = _Snapshot()


def _load() -> tuple[_StoredRule, ...]:
    from ranking.models import BusinessRule

    loaded = []
    for rule in BusinessRule.objects.filter(enabled=True).order_by("pk"):
        target_value = {"item": rule.item_id, "category": rule.category_id, "brand": rule.brand_id}[rule.target]
        if target_value is None:
            continue
        loaded.append(
            _StoredRule(
                rule=rr.Rule(
                    rule_id=rule.pk,
                    kind=rule.kind,
                    target=rule.target,
                    target_value=int(target_value),
                    weight=float(rule.weight),
                    position=(rule.position - 1) if rule.position else None,
                ),
                surfaces=frozenset(rule.surfaces),
                starts_at=rule.starts_at.timestamp() if rule.starts_at else None,
                ends_at=rule.ends_at.timestamp() if rule.ends_at else None,
            )  # fmt: skip
        )
    return tuple(loaded)


def active_rules(*, surface: str, now: float) -> tuple[rr.Rule, ...]:
    """The rules that apply to ``surface`` at ``now`` (Unix time)."""
    _snapshot.refresh()
    return tuple(stored.rule for stored in _snapshot.rules if stored.applies(surface, now))


def version_token() -> str:
    """Changes whenever a rule changes: part of every cache key, so an edited rule shows at once."""
    _snapshot.refresh()
    return _snapshot.token


def next_edge(*, now: float) -> float | None:
    """The first rule schedule edge (a ``starts_at`` or ``ends_at``) after ``now`` (Unix time), None when no rule
    starts or ends later. Part of every cache key, so a list cached before the edge is not served after it: a pin
    that starts or a boost that ends takes effect at once, not when the cached list expires. (Edges of every
    surface count: an edge elsewhere costs one recomputation, which is cheaper than sorting edges by surface.)"""
    _snapshot.refresh()
    edges = _snapshot.edges
    at = int(np.searchsorted(edges, now, side="right"))
    return float(edges[at]) if at < edges.size else None


def version_bump() -> None:
    try:
        redis_client.get().incr(VERSION_KEY)
    except redis.RedisError:
        logger.warning("rules_version_bump_failed", exc_info=True)
    reset()


def reset() -> None:
    """Forget this process's snapshot (tests; the admin after a change)."""
    with _snapshot.lock:
        _snapshot.loaded = False
        _snapshot.checked = 0.0
