"""The quality refresh: measure, publish the gauges, upsert the day's snapshot; and the dashboard's reads."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.utils import timezone

from kernel.metrics import quality_set
from quality.models import QualitySnapshot
from quality.services.queries import (
    _active_items,
    _diversity,
    _items_shown,
    _items_shown_7d,
    _latency_p95,
    _traffic,
    freshness_read,
)
from quality.services.report import (
    ALL,
    DIVERSITY_SAMPLE,
    FINALISE_GRACE,
    WEEK,
    WINDOW,
    Period,
    QualityReport,
    _hour,
    outcomes_sum,
    shares_mean,
)

logger = logging.getLogger(__name__)


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
