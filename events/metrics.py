"""Prometheus counters of the events app (served at /metrics by django-prometheus)."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS_INGESTED = Counter(
    "recsys_events_ingested_total", "Events accepted and newly stored (duplicates excluded), by type.", ["type"]
)
EVENTS_REJECTED = Counter("recsys_events_rejected_total", "Events rejected by validation or an unknown item.")
# Postgres committed but Redis did not take the update: non-zero means run rebuild_online_state.
ONLINE_STATE_ERRORS = Counter(
    "recsys_online_state_errors_total", "Online state updates that failed after the events were stored."
)
