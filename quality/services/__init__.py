"""Recommendation quality in production: CTR, conversion, catalog coverage, diversity, model and event freshness.

Computed in Postgres with set-based aggregates over bounded windows of served lists (``experiments_impression``,
BRIN on ``served_at``) joined to the interactions that carry their ``request_id`` (partial index), then published as
Prometheus gauges (``kernel.metrics.quality_set``) and kept as one ``QualitySnapshot`` row per UTC day for the admin
dashboard. ``quality_refresh`` is the one entry point; the Celery task ``recsys.tasks.quality_refresh`` calls it.
"""

from quality.services.queries import (
    bucket_quantile,
    freshness_read,
    latency_buckets_read,
)
from quality.services.refresh import (
    day_snapshot_compute,
    gauges_build,
    quality_refresh,
    replayed_share,
    snapshot_list,
    snapshot_upsert,
)
from quality.services.report import (
    ALL,
    CLICK,
    COVERAGE_7D_KEY,
    COVERAGE_7D_TTL,
    DIVERSITY_SAMPLE,
    FINALISE_GRACE,
    LATENCY_BASELINE_KEY,
    LATENCY_BASELINE_TTL,
    LATENCY_METRIC,
    NONE,
    PURCHASE,
    REPLAY_PREFIX,
    WEEK,
    WINDOW,
    Freshness,
    Outcome,
    Period,
    QualityReport,
    TrafficRow,
    outcomes_sum,
    shares_mean,
)

__all__ = [
    "ALL",
    "CLICK",
    "COVERAGE_7D_KEY",
    "COVERAGE_7D_TTL",
    "DIVERSITY_SAMPLE",
    "FINALISE_GRACE",
    "Freshness",
    "LATENCY_BASELINE_KEY",
    "LATENCY_BASELINE_TTL",
    "LATENCY_METRIC",
    "NONE",
    "Outcome",
    "PURCHASE",
    "Period",
    "QualityReport",
    "REPLAY_PREFIX",
    "TrafficRow",
    "WEEK",
    "WINDOW",
    "bucket_quantile",
    "day_snapshot_compute",
    "freshness_read",
    "gauges_build",
    "latency_buckets_read",
    "outcomes_sum",
    "quality_refresh",
    "replayed_share",
    "shares_mean",
    "snapshot_list",
    "snapshot_upsert",
]
