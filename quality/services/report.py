"""The quality figures: what a report holds, and the pure aggregation of traffic rows into them."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from events.models import Interaction

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


# --- Aggregation (pure) -----------------------------------------------------------------------------------------


def outcomes_sum(rows: Iterable[TrafficRow], *, from_hour: int | None = None) -> dict[OutcomeKey, Outcome]:
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


@dataclass(frozen=True)
class TrafficRow:
    hour: int
    surface: str
    experiment: str
    variant: str
    outcome: Outcome
