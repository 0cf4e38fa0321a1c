"""Reads of the events app for other apps (ranking, experiments): plain data out, never model instances.

Online reads come from Redis (events.online); recent history falls back to Postgres when Redis is unavailable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import redis
from django.db import connection
from django.db.models import Max, QuerySet
from redis.client import Pipeline

from events import keys, online
from events.features import ItemFeatures
from events.models import Interaction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryEntry:
    item_pk: int  # catalog.Item primary key
    type: int  # Interaction.Type value
    ts: float  # Unix time the event occurred


def recent_history(owner: str, limit: int = 50) -> list[HistoryEntry]:
    """The owner's latest events, newest first (``owner``: customer external id or ``s:<session_id>``).

    From Redis; from Postgres (the same events, by the same indexes) when Redis is unavailable.
    """
    try:
        rows = online.read_history(owner, limit=limit)
    except redis.RedisError:
        logger.warning("recent_history_redis_unavailable", exc_info=True)
        return recent_history_from_db(owner, limit)
    return [HistoryEntry(item_pk, type_, ts) for item_pk, type_, ts in rows]


def _owner_interactions(owner: str) -> QuerySet[Interaction]:
    """The owner's interactions in Postgres: a customer's, or an anonymous session's (a merged session's events
    belong to the customer now, as in Redis)."""
    customer_id, session_id = keys.parse_owner(owner)
    if not customer_id:
        return Interaction.objects.filter(session_id=session_id, customer__isnull=True)
    return Interaction.objects.filter(customer__external_id=customer_id)


def recent_history_from_db(owner: str, limit: int = 50) -> list[HistoryEntry]:
    """The same history from Postgres: for callers that already know Redis is down and must not wait on it."""
    interactions = _owner_interactions(owner)
    # Dismissals are not history (the online state keeps them apart: dismissed_from_db).
    interactions = interactions.exclude(type=Interaction.Type.DISMISS)
    rows = interactions.order_by("-occurred_at", "-id").values_list("item_id", "type", "occurred_at")[:limit]
    return [HistoryEntry(item_pk, type_, occurred_at.timestamp()) for item_pk, type_, occurred_at in rows]


def dismissed_from_db(owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The owner's dismissed items from Postgres (pks in order, Unix time of the latest dismissal): what serving
    leaves out when the online state cannot be read."""
    interactions = _owner_interactions(owner).filter(type=Interaction.Type.DISMISS)
    latest: dict[int, float] = {}
    for item_pk, occurred_at in interactions.values_list("item_id", "occurred_at")[:10_000]:
        latest[item_pk] = max(latest.get(item_pk, 0.0), occurred_at.timestamp())
    pks = np.array(sorted(latest), np.int64)
    return pks, np.array([latest[pk] for pk in pks.tolist()], np.float64)


def had_from_db(owner: str, *, limit: int = online.HAD_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """The owner's had items from Postgres (item pks, types): the distinct (item, type) pairs of their purchases and
    ratings, the newest ``limit`` (as ``keys.had`` keeps them). What serving leaves out when the online state
    cannot be read."""
    interactions = _owner_interactions(owner).filter(type__in=online.HAD_TYPES)
    rows = list(
        interactions.values("item_id", "type")  # GROUP BY item, type
        .annotate(latest=Max("occurred_at"))
        .order_by("-latest", "item_id", "type")
        .values_list("item_id", "type")[:limit]
    )
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = np.array(rows, np.int64)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def dismissed(owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The owner's dismissed items (pks in order, times): from Redis, from Postgres when Redis is unavailable."""
    try:
        return online.read_dismissed(owner)
    except redis.RedisError:
        logger.warning("dismissed_redis_unavailable", exc_info=True)
        return dismissed_from_db(owner)


@dataclass(frozen=True)
class HistoryColumns:
    """A history as arrays, newest first."""

    item_pk: np.ndarray  # int64 catalog.Item primary keys
    type: np.ndarray  # int64 Interaction.Type values
    ts: np.ndarray  # float64 Unix times


@dataclass(frozen=True)
class OwnerState:
    """An owner's recent history and category affinities, read in one round trip."""

    history: HistoryColumns
    affinity: dict[int, float]
    # False when Redis lost the online state (flushed, restarted empty): the history above may be missing events.
    complete: bool = True
    # "Not interested": item pks (ascending) and the Unix time of each one's latest dismissal.
    dismissed_pks: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    dismissed_ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    # The raw arrival time of the oldest event no served list has reflected yet (events.keys.arrival), or None.
    arrival: bytes | None = None
    # What the owner already has (events.keys.had): item pks and the event type (purchase, rating), one per pair.
    had_pks: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    had_types: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


OWNER_STATE_REPLIES = 6


def owner_state_queue(pipe: Pipeline, owner: str, *, history_limit: int) -> None:
    """Queue the reads of ``owner``'s online state on the caller's Redis pipeline (``OWNER_STATE_REPLIES``
    replies), so serving reads it in the same round trip as its own commands; ``owner_state_parse`` turns the
    replies into an :class:`OwnerState`."""
    online.queue_owner_reads(pipe, owner, limit=history_limit)


def owner_state_parse(replies: Sequence[Any]) -> OwnerState:
    history_rows, affinity_rows, complete, dismissed_rows, arrival, had_members = replies
    dismissed_pks, dismissed_ts = online.parse_dismissed(dismissed_rows)
    had_pks, had_types = online.parse_had(had_members)
    return OwnerState(
        HistoryColumns(*online.parse_history_columns(history_rows)),
        online.parse_affinity(affinity_rows),
        bool(complete),
        dismissed_pks,
        dismissed_ts,
        arrival,
        had_pks,
        had_types,
    )


def category_affinity(owner: str) -> dict[int, float]:
    """Category pk -> interest weight decayed to now (view 1, click 2, add-to-cart 4, purchase 8, rating its
    value; half-life 30 days). Empty when Redis is unavailable: affinities are a boost, not a necessity."""
    try:
        return online.read_affinity(owner)
    except redis.RedisError:
        logger.warning("category_affinity_redis_unavailable", exc_info=True)
        return {}


def cache_version_key(owner: str) -> str:
    """The Redis key of the owner's cache version, for callers that read it in their own pipeline."""
    return keys.cache_version(owner)


def cache_version(owner: str) -> int:
    """The owner's recommendation cache version (0 before any event). Raises ``redis.RedisError`` when Redis is
    unavailable: a caller that cannot know the version must not serve from its cache."""
    return online.read_cache_version(owner)


@dataclass(frozen=True)
class ItemCounters:
    """Hourly event counts of some items: each array is ``(len(item_pk), hours)``, the last column the current
    (partial) hour, the first ``hours - 1`` hours before it."""

    item_pk: np.ndarray
    views: np.ndarray
    clicks: np.ndarray
    add_to_carts: np.ndarray
    purchases: np.ndarray
    current_hour: int  # Unix time // 3600 of the last column


def item_counters(item_pks: Sequence[int], hours: int = 24, *, now: float | None = None) -> ItemCounters:
    """The hourly counters of ``item_pks`` for the ``hours`` hours up to ``now`` (default: the current time; at
    most eight days are kept), read in one pipeline. Raises ``redis.RedisError`` when Redis is unavailable."""
    now = time.time() if now is None else now
    counts = online.read_item_counters(list(item_pks), hours=hours, now=now)
    return ItemCounters(
        item_pk=np.asarray(item_pks, dtype=np.int64),
        views=counts[0],
        clicks=counts[1],
        add_to_carts=counts[2],
        purchases=counts[3],
        current_hour=int(now // online.HOUR),
    )


_features_lock = threading.Lock()
_features: tuple[str, ItemFeatures] | None = None
_features_checked = -float("inf")


def item_online_features(*, poll_seconds: float = 0.0) -> ItemFeatures | None:
    """The latest folded item features (views/clicks/add-to-carts/purchases in 24 h, purchases in 7 days, trend).

    Cached in process memory; a call costs one GET of the version token (none when the token was checked less
    than ``poll_seconds`` ago: serving's hot path passes one second, the fold runs every few minutes), and the blob
    is loaded again only when ``fold_item_counters`` has written a new one. ``None`` before the first fold; the
    cached copy (possibly stale) when Redis is unavailable. The arrays are read-only and shared: do not modify
    them.
    """
    global _features, _features_checked
    cached = _features
    now = time.monotonic()
    if cached is not None and now - _features_checked < poll_seconds:
        return cached[1]
    _features_checked = now
    try:
        version = online.read_item_features_version()
        if version is None:
            return None
        if cached is not None and cached[0] == version:
            return cached[1]
        with _features_lock:
            if _features is not None and _features[0] == version:
                return _features[1]
            loaded = online.read_item_features()
            if loaded is None:
                return None
            _features = (loaded[0], ItemFeatures.from_bytes(loaded[1]))
            return _features[1]
    except redis.RedisError:
        logger.warning("item_online_features_redis_unavailable", exc_info=True)
        return cached[1] if cached is not None else None


@dataclass(frozen=True)
class AttributedInteraction:
    event_id: str
    item_pk: int
    item_id: str  # the storefront's item id
    customer_id: str  # "" for anonymous events
    session_id: str
    type: int  # Interaction.Type value
    value: float | None
    occurred_at: datetime


def interactions_for_request(request_id: str) -> list[AttributedInteraction]:
    """Interactions attributed to a recommendation response (its ``request_id``), in time order."""
    if not request_id:
        return []
    rows = (
        Interaction.objects.filter(request_id=request_id)
        .order_by("occurred_at", "id")
        .values_list(
            "event_id",
            "item_id",
            "item__external_id",
            "customer__external_id",
            "session_id",
            "type",
            "value",
            "occurred_at",
        )  # fmt: skip
    )
    return [
        AttributedInteraction(event_id, item_pk, item_id, customer_id or "", session_id, type_, value, occurred_at)
        for event_id, item_pk, item_id, customer_id, session_id, type_, value, occurred_at in rows
    ]


def recently_popular_item_pks(*, window: int = 100_000, limit: int = 500) -> list[int]:
    """The most interacted-with items among the latest ``window`` events (a primary-key index scan): the
    popularity answer when there is no trained model. Items seen as often come by id, so every process agrees."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT e.item_id FROM (SELECT item_id FROM events_interaction ORDER BY id DESC LIMIT %s) e
               GROUP BY e.item_id ORDER BY count(*) DESC, e.item_id LIMIT %s""",
            [window, limit],
        )
        return [row[0] for row in cursor.fetchall()]


def recently_active_customer_ids(*, scan: int, limit: int) -> list[str]:
    """External ids of the customers behind the latest ``scan`` interactions, most recent first, at most ``limit``
    (one bounded index scan, whatever the table's size)."""
    latest = (
        Interaction.objects.filter(customer__isnull=False)
        .order_by("-pk")
        .values_list("customer__external_id", flat=True)[:scan]
    )
    return list(dict.fromkeys(latest))[:limit]


# GET /v1/customers (storefront/customer_list.py): activity is counted over the latest ACTIVITY_WINDOW interactions (an
# id range on the primary key), a page holds at most MAX_LIMIT customers at an offset of at most MAX_OFFSET.
ACTIVITY_WINDOW = 200_000  # the latest interactions activity is counted over
MAX_LIMIT = 100
MAX_OFFSET = 10_000
ORDERINGS = ("-activity", "customer_id")


@dataclass(frozen=True)
class CustomerActivity:
    customer_id: str
    interactions: int  # among the latest ACTIVITY_WINDOW interactions
    purchases: int


_WINDOW = "r.id > (SELECT coalesce(max(id), 0) FROM events_interaction) - %(window)s"

_BY_ACTIVITY = f"""
SELECT c.external_id, count(*) AS interactions, count(*) FILTER (WHERE r.type = %(purchase)s) AS purchases
  FROM events_interaction r JOIN catalog_customer c ON c.id = r.customer_id
 WHERE {_WINDOW}
 GROUP BY c.external_id
 ORDER BY interactions DESC, purchases DESC, c.external_id
 LIMIT %(limit)s OFFSET %(offset)s
"""  # noqa: S608 (interpolates a module constant only; values go as parameters)

_BY_ID = f"""
SELECT c.external_id, count(r.id), count(r.id) FILTER (WHERE r.type = %(purchase)s)
  FROM (SELECT id, external_id FROM catalog_customer ORDER BY external_id LIMIT %(limit)s OFFSET %(offset)s) c
  LEFT JOIN events_interaction r ON r.customer_id = c.id AND {_WINDOW}
 GROUP BY c.external_id
 ORDER BY c.external_id
"""  # noqa: S608 (same)


def customer_activity_list(*, ordering: str = "-activity", limit: int = 20, offset: int = 0) -> list[CustomerActivity]:
    """A page of customers with their recent activity; ``-activity``: the most interactions first (customers with
    none in the window are not listed), ``customer_id``: every customer by id. One query."""
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}")
    params = {
        "window": ACTIVITY_WINDOW, "purchase": int(Interaction.Type.PURCHASE),
        "limit": max(1, min(limit, MAX_LIMIT)), "offset": max(0, min(offset, MAX_OFFSET)),
    }  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_BY_ACTIVITY if ordering == "-activity" else _BY_ID, params)
        rows = cursor.fetchall()
    return [CustomerActivity(str(external_id), int(n), int(purchases)) for external_id, n, purchases in rows]
