"""Recommendation quality in production: CTR, conversion, catalog coverage, diversity, model and event freshness.

Computed in Postgres with set-based aggregates over bounded windows of served lists (``experiments_impression``,
BRIN on ``served_at``) joined to the interactions that carry their ``request_id`` (partial index), then published as
Prometheus gauges (``kernel.metrics.quality_set``) and kept as one ``QualitySnapshot`` row per UTC day for the admin
dashboard. ``quality_refresh`` is the one entry point; the Celery task ``recsys.tasks.quality_refresh`` calls it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import redis
from django.db import connection
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from events.models import Interaction
from kernel import redis_client
from kernel.metrics import quality_set
from quality.models import QualitySnapshot
from ranking import selectors as ranking_selectors

logger = logging.getLogger(__name__)

CLICK = int(Interaction.Type.CLICK)
PURCHASE = int(Interaction.Type.PURCHASE)

ALL = "all"  # label value of the totals (every surface, experiment or variant)
NONE = "-"  # experiment and variant of lists served outside any experiment, as in recsys_recommendation_requests_total
# request_id prefix of the lists ``manage.py replay_demo_traffic`` served (live request ids are uuid4 hex, so the
# prefix cannot collide): counted apart so the dashboard says which figures come from replayed demo traffic.
REPLAY_PREFIX = "replay-"
WINDOW = timedelta(hours=24)
WEEK = timedelta(days=7)
# Diversity is a mean over lists: a uniform sample of this many lists per window estimates it to about ±0.002 while
# keeping the unnest + catalog join bounded however much traffic there is.
DIVERSITY_SAMPLE = 20_000
# Yesterday's row is recomputed during the first hour of a day, so clicks on lists served just before midnight and
# the last few minutes of the day count; after that it is final.
FINALISE_GRACE = timedelta(hours=1)
# The 7-day coverage scans a week of lists: once an hour is fresh enough for a weekly figure.
COVERAGE_7D_KEY = "quality:items_shown_7d"
COVERAGE_7D_TTL = 3600
LATENCY_METRIC = "recsys_recommendation_latency_seconds"
LATENCY_BASELINE_KEY = "quality:latency_baseline:{day}"
LATENCY_BASELINE_TTL = 3 * 86_400


# --- Figures ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Lists served and how many of them led to an attributed click / purchase (same ``request_id``)."""

    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    replayed: int = 0  # of the impressions, lists served by the demo traffic replay

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(
            self.impressions + other.impressions, self.clicks + other.clicks, self.conversions + other.conversions,
            self.replayed + other.replayed,
        )  # fmt: skip

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None

    @property
    def conversion_rate(self) -> float | None:
        return self.conversions / self.impressions if self.impressions else None


# (surface, experiment, variant); surface totals are (surface, "all", "all"), the grand total ("all", "all", "all").
OutcomeKey = tuple[str, str, str]


@dataclass(frozen=True)
class Period:
    """The figures of one time range."""

    since: datetime
    until: datetime
    outcomes: dict[OutcomeKey, Outcome]
    max_category_share: dict[str, float]  # surface (and "all") -> mean over the sampled lists
    items_shown: int  # distinct active items in at least one list
    active_items: int
    items_shown_7d: int | None = None  # distinct active items shown in the 7 days up to ``until``

    @property
    def total(self) -> Outcome:
        return self.outcomes.get((ALL, ALL, ALL), Outcome())

    @property
    def coverage(self) -> float | None:
        return _ratio(self.items_shown, self.active_items)

    @property
    def coverage_7d(self) -> float | None:
        return None if self.items_shown_7d is None else _ratio(self.items_shown_7d, self.active_items)


@dataclass(frozen=True)
class Freshness:
    """Ages in seconds at ``now`` (None when there is nothing to measure)."""

    model_trained: float | None = None  # the active version's training
    model_activated: float | None = None  # the active version's activation
    last_training: float | None = None  # the newest successfully trained version, active or not
    last_event: float | None = None  # the newest stored interaction (received_at)


@dataclass(frozen=True)
class QualityReport:
    computed_at: datetime
    window: Period  # the last 24 hours: the gauges
    today: Period  # since midnight UTC: today's snapshot
    freshness: Freshness
    latency_p95_ms: float | None
    finalised: list[date] = field(default_factory=list)  # days whose snapshot was recomputed besides today

    def as_dict(self) -> dict[str, Any]:
        total = self.window.total
        return {
            "computed_at": self.computed_at.isoformat(),
            "impressions_24h": total.impressions,
            "ctr_24h": total.ctr,
            "conversion_rate_24h": total.conversion_rate,
            "coverage_24h": self.window.coverage,
            "coverage_7d": self.window.coverage_7d,
            "max_category_share_24h": self.window.max_category_share.get(ALL),
            "latency_p95_ms_today": self.latency_p95_ms,
            "finalised": [day.isoformat() for day in self.finalised],
        }


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


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


@dataclass(frozen=True)
class _TrafficRow:
    hour: int
    surface: str
    experiment: str
    variant: str
    outcome: Outcome


def _traffic(*, since: datetime, until: datetime) -> list[_TrafficRow]:
    with connection.cursor() as cursor:
        cursor.execute(_TRAFFIC_SQL, {"since": since, "until": until})
        rows = cursor.fetchall()
    return [
        _TrafficRow(
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


# --- Aggregation (pure) -----------------------------------------------------------------------------------------


def outcomes_sum(rows: Iterable[_TrafficRow], *, from_hour: int | None = None) -> dict[OutcomeKey, Outcome]:
    """Per (surface, experiment, variant) totals of the hourly rows from ``from_hour`` on, with each surface's
    total and the grand total ("all", "all", "all")."""
    totals: dict[OutcomeKey, Outcome] = defaultdict(Outcome)
    for row in rows:
        if from_hour is not None and row.hour < from_hour:
            continue
        totals[(row.surface, row.experiment, row.variant)] += row.outcome
        if row.experiment == ALL:  # a surface total: lists of different surfaces are different requests
            totals[(ALL, ALL, ALL)] += row.outcome
    return dict(totals)


def shares_mean(rows: Iterable[tuple[int, str, int, float]], *, from_hour: int | None = None) -> dict[str, float]:
    """Mean max-category share per surface and over all ("all") from ``(hour, surface, lists, share sum)`` rows."""
    lists: dict[str, int] = defaultdict(int)
    sums: dict[str, float] = defaultdict(float)
    for hour, surface, n, total in rows:
        if from_hour is not None and hour < from_hour:
            continue
        for key in (surface, ALL):
            lists[key] += n
            sums[key] += total
    return {key: sums[key] / lists[key] for key in lists if lists[key]}


def _hour(moment: datetime) -> int:
    return math.floor(moment.timestamp() / 3600)


def _measure(*, since: datetime, until: datetime, day_start: datetime) -> tuple[Period, Period]:
    """Figures of [since, until) and of its tail [day_start, until), from one scan per aggregate."""
    traffic = _traffic(since=since, until=until)
    rows_in_window = sum(row.outcome.impressions for row in traffic if row.experiment != ALL)
    diversity = _diversity(since=since, until=until, stride=math.ceil(rows_in_window / DIVERSITY_SAMPLE))
    shown_whole, shown_tail = _items_shown(until=until, starts=[since, day_start])
    active = _active_items()
    day_hour = _hour(day_start)
    whole = Period(
        since=since, until=until, outcomes=outcomes_sum(traffic), max_category_share=shares_mean(diversity),
        items_shown=shown_whole, active_items=active,
    )  # fmt: skip
    tail = Period(
        since=day_start, until=until, outcomes=outcomes_sum(traffic, from_hour=day_hour),
        max_category_share=shares_mean(diversity, from_hour=day_hour), items_shown=shown_tail, active_items=active,
    )  # fmt: skip
    return whole, tail


def _items_shown_7d(*, now: datetime, at_least: int) -> int:
    """Distinct active items shown in the last 7 days: from the hourly cache unless it is missing or below what
    the last 24 hours alone reached (then stale), else one scan of the week, cached for an hour."""
    client = redis_client.get()
    try:
        cached = client.get(COVERAGE_7D_KEY)
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
    baseline = _load_buckets(client.get(key))
    yesterday_p95 = None
    if baseline is None:
        yesterday_baseline = _load_buckets(client.get(yesterday_key))
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


# --- Publishing -------------------------------------------------------------------------------------------------


def _labels(**values: str) -> str:
    return ",".join(f"{name}={value}" for name, value in values.items())


def gauges_build(report: QualityReport) -> dict[str, dict[str, float]]:
    """Every gauge family with all its series: a family with no series is published empty, so a surface or variant
    that stopped serving disappears instead of showing its last value forever."""
    window = report.window
    impressions: dict[str, float] = {}
    ctr: dict[str, float] = {}
    conversion: dict[str, float] = {}
    for (surface, experiment, variant), outcome in sorted(window.outcomes.items()):
        key = _labels(surface=surface, experiment=experiment, variant=variant)
        impressions[key] = outcome.impressions
        if outcome.ctr is not None:
            ctr[key] = outcome.ctr
        if outcome.conversion_rate is not None:
            conversion[key] = outcome.conversion_rate
    coverage = {_labels(window="24h"): window.coverage} | {_labels(window="7d"): window.coverage_7d}
    shown = {_labels(window="24h"): window.items_shown} | {_labels(window="7d"): window.items_shown_7d}
    fresh = report.freshness
    model_age = {_labels(since="trained"): fresh.model_trained, _labels(since="activated"): fresh.model_activated}
    families: dict[str, dict[str, float | None]] = {
        "recsys_recommendation_impressions_24h": dict(impressions),
        "recsys_recommendation_ctr": dict(ctr),
        "recsys_recommendation_conversion_rate": dict(conversion),
        "recsys_catalog_coverage": coverage,
        "recsys_catalog_items_shown": dict(shown),
        "recsys_catalog_active_items": {"": window.active_items},
        "recsys_list_max_category_share_mean": {
            _labels(surface=surface): share for surface, share in sorted(window.max_category_share.items())
        },
        "recsys_model_version_age_seconds": model_age,
        "recsys_model_last_training_age_seconds": {"": fresh.last_training},
        "recsys_events_last_received_age_seconds": {"": fresh.last_event},
        "recsys_quality_computed_timestamp_seconds": {"": report.computed_at.timestamp()},
    }
    return {
        name: {key: float(value) for key, value in series.items() if value is not None}
        for name, series in families.items()
    }


def _by_surface(period: Period) -> list[dict[str, Any]]:
    rows = []
    for (surface, experiment, variant), outcome in sorted(period.outcomes.items()):
        row: dict[str, Any] = {
            "surface": surface, "experiment": experiment, "variant": variant, "impressions": outcome.impressions,
            "clicks": outcome.clicks, "conversions": outcome.conversions, "ctr": outcome.ctr,
            "conversion_rate": outcome.conversion_rate, "replayed": outcome.replayed,
        }  # fmt: skip
        if experiment == ALL:
            row["max_category_share"] = period.max_category_share.get(surface)
        rows.append(row)
    return rows


def _snapshot_values(period: Period, computed_at: datetime) -> dict[str, Any]:
    total = period.total
    return {
        "impressions": total.impressions,
        "clicks": total.clicks,
        "conversions": total.conversions,
        "ctr": total.ctr,
        "conversion_rate": total.conversion_rate,
        "active_items": period.active_items,
        "coverage_24h": period.coverage,
        "coverage_7d": period.coverage_7d,
        "max_category_share": period.max_category_share.get(ALL),
        "by_surface": _by_surface(period),
        "computed_at": computed_at,
    }


def snapshot_upsert(*, day: date, values: Mapping[str, Any]) -> None:
    """Insert or update the day's row in one statement (INSERT ... ON CONFLICT (date) DO UPDATE): two runs at once
    cannot collide. Only the given fields change on an existing row."""
    QualitySnapshot.objects.bulk_create(
        [QualitySnapshot(date=day, **values)],
        update_conflicts=True,
        unique_fields=["date"],
        update_fields=list(values),
    )


# --- The service ------------------------------------------------------------------------------------------------


def quality_refresh(*, now: datetime | None = None) -> QualityReport:
    """Compute the last 24 hours' figures and today's, publish the gauges, upsert today's snapshot, and recompute
    yesterday's until it is final (first computed after ``FINALISE_GRACE`` past midnight). Days before the platform
    ran have no row and get none.

    Read-only on the served lists and interactions; writes one or two ``QualitySnapshot`` rows and the Redis hash of
    gauges. Idempotent: a second run at the same ``now`` writes the same values.
    """
    now = now or timezone.now()
    midnight = datetime.combine(now.date(), time(), tzinfo=UTC)
    window, today = _measure(since=now - WINDOW, until=now, day_start=midnight)
    week = _items_shown_7d(now=now, at_least=window.items_shown)
    window = dataclasses.replace(window, items_shown_7d=week)
    today = dataclasses.replace(today, items_shown_7d=week)
    latency_today, latency_yesterday = _latency_p95(now.date())
    report = QualityReport(
        computed_at=now, window=window, today=today, freshness=freshness_read(now=now), latency_p95_ms=latency_today
    )
    quality_set(gauges_build(report))
    snapshot_upsert(day=now.date(), values=_snapshot_values(today, now) | {"latency_p95_ms": latency_today})
    yesterday = now.date() - timedelta(days=1)
    previous = QualitySnapshot.objects.filter(date=yesterday).values_list("computed_at", flat=True).first()
    if previous is not None and previous < midnight + FINALISE_GRACE:
        start = midnight - timedelta(days=1)
        _, closed = _measure(since=start, until=midnight, day_start=start)
        values = _snapshot_values(closed, now)
        # The 7-day coverage stays as the day's last run left it: a week's scan is not worth a few minutes' change.
        del values["coverage_7d"]
        if latency_yesterday is not None:
            values["latency_p95_ms"] = latency_yesterday
        snapshot_upsert(day=yesterday, values=values)
        report.finalised.append(yesterday)
    logger.info("quality_refreshed", extra=report.as_dict())
    return report


def day_snapshot_compute(*, day: date, latency_p95_ms: float | None, now: datetime | None = None) -> None:
    """Compute and upsert the snapshot of one whole past UTC day from the lists served that day, as the day's last
    run would have: no gauges and no cached 7-day figure (both describe the present). For ``replay_demo_traffic``,
    which serves lists dated on past days and measures their latency itself. Idempotent."""
    now = now or timezone.now()
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1)
    _, period = _measure(since=start, until=end, day_start=start)
    (week,) = _items_shown(until=end, starts=[end - WEEK])
    period = dataclasses.replace(period, items_shown_7d=week)
    snapshot_upsert(day=day, values=_snapshot_values(period, now) | {"latency_p95_ms": latency_p95_ms})


def replayed_share(snapshot: QualitySnapshot) -> tuple[int, int]:
    """(replayed lists, all lists) of a day, from its grand-total row."""
    total = next((row for row in snapshot.by_surface if row.get("surface") == ALL), None)
    return (int(total.get("replayed", 0)), int(total.get("impressions", 0))) if total else (0, 0)


# --- Reads for the dashboard ------------------------------------------------------------------------------------


def snapshot_list(*, days: int = 90, today: date | None = None) -> list[QualitySnapshot]:
    """The daily rows of the last ``days`` days, oldest first (bounded: at most ``days`` rows)."""
    today = today or timezone.now().date()
    return list(QualitySnapshot.objects.filter(date__gt=today - timedelta(days=days)).order_by("date"))
