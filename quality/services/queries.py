"""What the quality figures are computed from: Postgres (traffic, diversity, items shown, freshness) and the
Prometheus multi-process files (latency)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, cast

import redis
from django.db import connection
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from kernel import redis_client
from quality.services.report import (
    ALL,
    CLICK,
    COVERAGE_7D_KEY,
    COVERAGE_7D_TTL,
    LATENCY_BASELINE_KEY,
    LATENCY_BASELINE_TTL,
    LATENCY_METRIC,
    NONE,
    PURCHASE,
    REPLAY_PREFIX,
    WEEK,
    Freshness,
    Outcome,
    TrafficRow,
)
from ranking import selectors as ranking_selectors

logger = logging.getLogger(__name__)

# --- SQL --------------------------------------------------------------------------------------------------------

# Lists served in [since, until) per hour, surface, experiment and variant, with the lists that got an attributed
# click or purchase. A request in two experiment layers has a row per experiment: counted once per variant, and once
# in its surface's total (count DISTINCT request_id over the (hour, surface) grouping set).
_TRAFFIC_SQL = f"""
WITH imp AS (
    SELECT i.request_id, i.surface, floor(extract(epoch FROM i.served_at) / 3600)::bigint AS hour,
           coalesce(e.key, '{NONE}') AS experiment, coalesce(v.name, '{NONE}') AS variant
      FROM experiments_impression i
      LEFT JOIN experiments_experiment e ON e.id = i.experiment_id
      LEFT JOIN experiments_variant v ON v.id = i.variant_id
     WHERE i.served_at >= %(since)s AND i.served_at < %(until)s
),
outcome AS (
    SELECT x.request_id, bool_or(x.type = {CLICK}) AS clicked, bool_or(x.type = {PURCHASE}) AS converted
      FROM events_interaction x
     WHERE x.request_id <> '' AND x.request_id IN (SELECT request_id FROM imp)
     GROUP BY x.request_id
)
SELECT imp.hour, imp.surface, imp.experiment, imp.variant, GROUPING(imp.experiment, imp.variant) <> 0,
       count(DISTINCT imp.request_id),
       count(DISTINCT imp.request_id) FILTER (WHERE o.clicked),
       count(DISTINCT imp.request_id) FILTER (WHERE o.converted),
       count(DISTINCT imp.request_id) FILTER (WHERE imp.request_id LIKE '{REPLAY_PREFIX}%%')
  FROM imp LEFT JOIN outcome o USING (request_id)
 GROUP BY GROUPING SETS ((imp.hour, imp.surface, imp.experiment, imp.variant), (imp.hour, imp.surface))
"""  # noqa: S608 (interpolates module constants only; values go as parameters)

# The share of the most frequent category in each sampled list (one row per request: the row of its first
# experiment), summed per hour and surface. Items without a category count as one category, as in serving.
_DIVERSITY_SQL = """
WITH lists AS (
    SELECT i.id, i.surface, floor(extract(epoch FROM i.served_at) / 3600)::bigint AS hour, i.item_pks
      FROM experiments_impression i
     WHERE i.served_at >= %(since)s AND i.served_at < %(until)s
       AND cardinality(i.item_pks) > 0 AND i.id %% %(stride)s = 0
       AND NOT EXISTS (SELECT 1 FROM experiments_impression j
                        WHERE j.request_id = i.request_id AND j.experiment_id < i.experiment_id)
),
cells AS (
    SELECT l.id, count(*) AS n
      FROM lists l CROSS JOIN LATERAL unnest(l.item_pks) AS u(pk)
      LEFT JOIN catalog_item c ON c.id = u.pk
     GROUP BY l.id, coalesce(c.category_id, -1)
),
shares AS (SELECT id, max(n)::float8 / sum(n) AS share FROM cells GROUP BY id)
SELECT l.hour, l.surface, count(*), sum(s.share)
  FROM lists l JOIN shares s USING (id)
 GROUP BY l.hour, l.surface
"""

# Every item shown in [since, until) with the last time it was, restricted to active items; one pass answers the
# distinct counts of several windows ending at ``until`` (one FILTER per window start).
_ITEMS_SHOWN_SQL = """
SELECT {filters}
  FROM (SELECT u.pk, max(i.served_at) AS last_shown
          FROM experiments_impression i CROSS JOIN LATERAL unnest(i.item_pks) AS u(pk)
         WHERE i.served_at >= %(since)s AND i.served_at < %(until)s
         GROUP BY u.pk) s
  JOIN catalog_item c ON c.id = s.pk
 WHERE c.active
"""


def _traffic(*, since: datetime, until: datetime) -> list[TrafficRow]:
    with connection.cursor() as cursor:
        cursor.execute(_TRAFFIC_SQL, {"since": since, "until": until})
        rows = cursor.fetchall()
    return [
        TrafficRow(
            int(hour),
            surface,
            ALL if total else experiment,
            ALL if total else variant,
            Outcome(int(impressions), int(clicks), int(conversions), int(replayed)),
        )  # fmt: skip
        for hour, surface, experiment, variant, total, impressions, clicks, conversions, replayed in rows
    ]


def _diversity(*, since: datetime, until: datetime, stride: int) -> list[tuple[int, str, int, float]]:
    """(hour, surface, lists, sum of max-category shares) of every ``stride``-th list."""
    with connection.cursor() as cursor:
        cursor.execute(_DIVERSITY_SQL, {"since": since, "until": until, "stride": max(1, stride)})
        return [(int(hour), surface, int(n), float(total)) for hour, surface, n, total in cursor.fetchall()]


def _items_shown(*, until: datetime, starts: Sequence[datetime]) -> list[int]:
    """Distinct active items shown in [start, until) for each start, in one scan from the earliest."""
    filters = ", ".join(f"count(*) FILTER (WHERE s.last_shown >= %(start_{n})s)" for n in range(len(starts)))
    params: dict[str, Any] = {"since": min(starts), "until": until}
    params.update({f"start_{n}": start for n, start in enumerate(starts)})
    with connection.cursor() as cursor:
        cursor.execute(_ITEMS_SHOWN_SQL.format(filters=filters), params)
        row = cursor.fetchone()
    return [int(value) for value in row]


def _active_items() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM catalog_item WHERE active")
        return int(cursor.fetchone()[0])


def _last_event_received() -> datetime | None:
    """The newest interaction's arrival: the primary key's last entry, an index lookup."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT received_at FROM events_interaction ORDER BY id DESC LIMIT 1")
        row = cursor.fetchone()
    return row[0] if row else None


# --- Items shown over the week (cached) ----------------------------------------------------------------------


def _items_shown_7d(*, now: datetime, at_least: int) -> int:
    """Distinct active items shown in the last 7 days: from the hourly cache unless it is missing or below what
    the last 24 hours alone reached (then stale), else one scan of the week, cached for an hour."""
    client = redis_client.get()
    try:
        cached = cast(bytes | None, client.get(COVERAGE_7D_KEY))
    except redis.RedisError:
        cached = None
    if cached is not None and int(cached) >= at_least:
        return int(cached)
    (shown,) = _items_shown(until=now, starts=[now - WEEK])
    try:
        client.set(COVERAGE_7D_KEY, shown, ex=COVERAGE_7D_TTL)
    except redis.RedisError:
        logger.warning("quality_cache_unavailable", exc_info=True)
    return shown


# --- Freshness --------------------------------------------------------------------------------------------------


def freshness_read(*, now: datetime) -> Freshness:
    """How old the active model, the newest training and the newest event are at ``now`` (three index reads)."""
    active = ranking_selectors.active_version()
    trained = next(
        (v.created_at for v in ranking_selectors.version_list(limit=50) if v.status != v.Status.FAILED), None
    )
    last_event = _last_event_received()

    def age(moment: datetime | None) -> float | None:
        return max(0.0, (now - moment).total_seconds()) if moment is not None else None

    return Freshness(
        model_trained=age(active.created_at) if active else None,
        model_activated=age(active.activated_at) if active else None,
        last_training=age(trained),
        last_event=age(last_event),
    )


# --- Latency from the Prometheus multi-process files ------------------------------------------------------------


def latency_buckets_read(*, directory: str | None = None) -> dict[float, float] | None:
    """Cumulative bucket counts (upper bound -> observations) of ``recsys_recommendation_latency_seconds`` summed
    over every endpoint, surface, variant and process that wrote to the multi-process directory (default:
    ``PROMETHEUS_MULTIPROC_DIR``). None without such a directory: a single process's histogram says nothing about
    the web processes serving traffic."""
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory or not os.path.isdir(directory):
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    buckets: dict[float, float] = defaultdict(float)
    for family in registry.collect():
        if family.name != LATENCY_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{LATENCY_METRIC}_bucket":
                buckets[float(sample.labels["le"])] += sample.value
    return dict(buckets)


def bucket_quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative buckets: linear interpolation inside the bucket holding the
    q-th observation (from 0 for the first); the highest finite bound when it falls in +Inf. None without data."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > previous_count:
            if math.isinf(bound):
                return previous_bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound


def _bucket_diff(current: Mapping[float, float], baseline: Mapping[float, float]) -> dict[float, float] | None:
    """current - baseline; None when a bucket went down (the files were reset by a restart)."""
    diff = {bound: count - baseline.get(bound, 0.0) for bound, count in current.items()}
    return None if any(value < 0 for value in diff.values()) else diff


def _load_buckets(raw: bytes | None) -> dict[float, float] | None:
    return None if raw is None else {float(bound): float(count) for bound, count in json.loads(raw).items()}


def _dump_buckets(buckets: Mapping[float, float]) -> str:
    return json.dumps({repr(bound): count for bound, count in buckets.items()})


def _latency_p95(today: date) -> tuple[float | None, float | None]:
    """(today's p95 so far, yesterday's final p95 or None) in milliseconds, from the histogram's growth since the
    day's baseline: the cumulative counts stored in Redis at the day's first run. The first day the task sees
    counts from since the processes started; after a restart (counts went down) the day starts again from zero."""
    current = latency_buckets_read()
    if current is None:
        return None, None
    client = redis_client.get()
    key = LATENCY_BASELINE_KEY.format(day=today.isoformat())
    yesterday_key = LATENCY_BASELINE_KEY.format(day=(today - timedelta(days=1)).isoformat())
    baseline = _load_buckets(cast(bytes | None, client.get(key)))
    yesterday_p95 = None
    if baseline is None:
        yesterday_baseline = _load_buckets(cast(bytes | None, client.get(yesterday_key)))
        if yesterday_baseline is not None:
            # The first run of a day closes yesterday: its growth up to now (at most a few minutes of today).
            grown = _bucket_diff(current, yesterday_baseline)
            yesterday_p95 = bucket_quantile(grown, 0.95) if grown is not None else None
            baseline = current
        else:
            baseline = {bound: 0.0 for bound in current}
        client.set(key, _dump_buckets(baseline), ex=LATENCY_BASELINE_TTL)
    grown = _bucket_diff(current, baseline)
    if grown is None:
        grown = current
        client.set(key, _dump_buckets({bound: 0.0 for bound in current}), ex=LATENCY_BASELINE_TTL)
    today_p95 = bucket_quantile(grown, 0.95)
    return (
        today_p95 * 1000 if today_p95 is not None else None,
        yesterday_p95 * 1000 if yesterday_p95 is not None else None,
    )
