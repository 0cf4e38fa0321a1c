"""What the recommendation endpoints return, and the serving metrics every list path records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from ranking.pipeline.stages import Reason

REQUESTS = Counter(
    "recsys_recommendation_requests_total", "Recommendation requests.", ["endpoint", "surface", "variant", "cache"]
)
LATENCY = Histogram(
    "recsys_recommendation_latency_seconds", "Recommendation latency inside the service.",
    ["endpoint", "surface", "variant"],
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)  # fmt: skip
STAGE = Histogram(
    "recsys_pipeline_stage_seconds", "Time per pipeline stage.", ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)  # fmt: skip
DEGRADED = Counter("recsys_degraded_responses_total", "Responses served in a degraded mode.", ["reason"])
CATEGORY_SHARE = Histogram(
    "recsys_list_max_category_share", "Share of the most frequent category in each served list.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)  # fmt: skip

# Freshness, measured (issue 16): for a list computed after an owner's events, the seconds from the arrival of the
# oldest event no list had reflected yet to this list. A list computed after an event always reflects it (the
# event bumped the owner's cache version, so the list was computed from the state that holds the event); what this
# measures is how long owners wait for that, including events whose owner asks again only later. "probe": the
# synthetic freshness probe (ranking.tasks.freshness_probe), kept apart from real traffic.
EVENT_TO_LIST = Histogram(
    "recsys_event_to_list_seconds", "From an owner's event arriving to the first list that reflects it.", ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)  # fmt: skip
# The probe's outcomes (ranking.freshness), here with the other serving metrics: a process's /metrics lists the
# families it has imported, and web processes never import the probe (tests/kernel/test_metrics_families checks
# every family docs/operations.md names is exposed).
PROBE_RESULTS = Counter(
    "recsys_freshness_probe_total", "Synthetic freshness probes: ok, stale (the list ignored the event), error.",
    ["result"],
)  # fmt: skip


class UnknownItem(LookupError):
    """The item id names no item in the catalog."""


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    title: str
    category: str | None
    price: float | None
    score: float
    reason: Reason
    sources: tuple[str, ...]


@dataclass(frozen=True)
class RecommendationList:
    request_id: str
    surface: str
    items: tuple[RecommendedItem, ...]
    experiment: str | None = None
    variant: str | None = None
    model_version: int | None = None
    degraded: bool = False
    cache: str = "miss"
    debug: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The response body's shape; built field by field (``dataclasses.asdict`` deep-copies, which costs more
        than the rest of a cached request)."""
        return {
            "request_id": self.request_id, "surface": self.surface,
            "items": [
                {
                    "item_id": item.item_id, "title": item.title, "category": item.category, "price": item.price,
                    "score": item.score, "reason": {"code": item.reason.code, "text": item.reason.text},
                    "sources": list(item.sources),
                }
                for item in self.items
            ],
            "experiment": self.experiment, "variant": self.variant, "model_version": self.model_version,
            "degraded": self.degraded, "cache": self.cache, "debug": self.debug,
        }  # fmt: skip


@dataclass(frozen=True)
class AnchorGroup:
    anchor_item_id: str
    anchor_title: str
    reason: Reason
    items: tuple[RecommendedItem, ...]


@dataclass(frozen=True)
class AnchorGroups:
    request_id: str
    groups: tuple[AnchorGroup, ...]
    model_version: int | None
    experiment: str | None = None
    variant: str | None = None
    # Served without a model, or with the history read from Postgres (Redis down, or its online state lost).
    degraded: bool = False


__all__ = [
    "AnchorGroup", "AnchorGroups", "CATEGORY_SHARE", "DEGRADED", "LATENCY", "REQUESTS", "Reason", "RecommendationList",
    "RecommendedItem", "STAGE", "UnknownItem",
]  # fmt: skip
