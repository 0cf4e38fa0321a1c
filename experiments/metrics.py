"""Prometheus counters of the experiments app (served at /metrics by django-prometheus)."""

from __future__ import annotations

from prometheus_client import Counter

IMPRESSION_LOG_ERRORS = Counter(
    "recsys_impression_log_errors_total",
    "Impressions that could not be queued for logging (Redis unavailable, unserialisable record).",
    ["reason"],
)
IMPRESSIONS_STORED = Counter("recsys_impressions_stored_total", "Impression rows newly written to Postgres.")
ASSIGNMENT_SNAPSHOT_RELOADS = Counter(
    "recsys_assignment_snapshot_reloads_total",
    "Reloads of the in-process experiment snapshot, by cause.",
    ["cause"],
)
