"""Merchandising rules as the serving path sees them: every enabled, published rule (drafts are never served),
cached in each process and reloaded only when the rules version in Redis changes (checked at most once a second),
then filtered per request by surface and schedule. Rule changes go through
:func:`ranking.merchandising.business_rule_save` (and ``business_rule_publish``), which bump the version. The dry run
(``ranking.dry_run``) builds its own rule sets from :func:`published_rules` and :func:`stored_rule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kernel.versions import VersionedSnapshot, bump
from ranking import rerank as rr

VERSION_KEY = "rules:version"
_CHECK_EVERY = 1.0


@dataclass(frozen=True)
class StoredRule:
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


@dataclass(frozen=True)
class _Rules:
    rules: tuple[StoredRule, ...]
    edges: npt.NDArray[np.float64]  # every rule's starts_at and ends_at, sorted


def _load_rules() -> _Rules:
    loaded = _load()
    edges = np.unique([edge for stored in loaded for edge in (stored.starts_at, stored.ends_at) if edge is not None])
    return _Rules(loaded, np.asarray(edges, dtype=np.float64))


# Redis unreachable: keep the rules we have (a rule cannot change meanwhile without the bump failing loudly).
# Postgres unreachable: keep serving the rules we have, so a hiccup does not drop every pin and block.
_snapshot: VersionedSnapshot[_Rules] = VersionedSnapshot(
    key=VERSION_KEY,
    load=lambda: _load_rules(),
    fallback=_Rules((), np.empty(0, dtype=np.float64)),
    check_seconds=_CHECK_EVERY,
    reload_when_unknown=False,
    name="rules",
)


def _load() -> tuple[StoredRule, ...]:
    from ranking.models import BusinessRule

    published = BusinessRule.objects.filter(enabled=True, status=BusinessRule.Status.PUBLISHED).order_by("pk")
    return tuple(stored for rule in published if (stored := stored_rule(rule)) is not None)


def stored_rule(rule: Any) -> StoredRule | None:
    """A ``BusinessRule`` row as the re-ranker takes it, with its surfaces and schedule (None: no target)."""
    target_value = {"item": rule.item_id, "category": rule.category_id, "brand": rule.brand_id}[rule.target]
    if target_value is None:
        return None
    return StoredRule(
        rule=rr.Rule(
            rule_id=rule.pk or 0, kind=rule.kind, target=rule.target, target_value=int(target_value),
            weight=_bounded(rule.weight), position=(rule.position - 1) if rule.position else None,
        ),
        surfaces=frozenset(rule.surfaces),
        starts_at=rule.starts_at.timestamp() if rule.starts_at else None,
        ends_at=rule.ends_at.timestamp() if rule.ends_at else None,
    )  # fmt: skip


def published_rules() -> tuple[StoredRule, ...]:
    """Every enabled, published rule with its surfaces and schedule (this process's snapshot): the dry run
    filters them per replayed request with ``StoredRule.applies``."""
    return _snapshot.get().rules


def active_rules(*, surface: str, now: float) -> tuple[rr.Rule, ...]:
    """The rules that apply to ``surface`` at ``now`` (Unix time)."""
    return tuple(stored.rule for stored in _snapshot.get().rules if stored.applies(surface, now))


def version_token() -> str:
    """Changes whenever a rule changes: part of every cache key, so an edited rule shows at once."""
    token = _snapshot.token
    return "unknown" if token is None else token.decode()


def next_edge(*, now: float) -> float | None:
    """The first rule schedule edge (a ``starts_at`` or ``ends_at``) after ``now`` (Unix time), None when no rule
    starts or ends later. Part of every cache key, so a list cached before the edge is not served after it: a pin
    that starts or a boost that ends takes effect at once, not when the cached list expires. (Edges of every
    surface count: an edge elsewhere costs one recomputation, which is cheaper than sorting edges by surface.)"""
    edges = _snapshot.get().edges
    at = int(np.searchsorted(edges, now, side="right"))
    return float(edges[at]) if at < edges.size else None


def version_bump() -> None:
    """Move the rules version now (every process reloads within a second) and forget this process's rules."""
    bump(VERSION_KEY)
    reset()


def reset() -> None:
    """Forget this process's snapshot (tests; the admin after a change)."""
    _snapshot.clear()


def _bounded(weight: float) -> float:
    """A stored weight as the re-ranker takes it: at most ``MAX_RULE_WEIGHT`` (rows stored before the bound), and 0
    for one that is not a number (the database's check lets NaN through)."""
    value = float(weight)
    return min(value, rr.MAX_RULE_WEIGHT) if math.isfinite(value) or value > 0 else 0.0
