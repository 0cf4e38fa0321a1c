"""Celery tasks of the events app (queue ``events``): thin and idempotent, each calls one service."""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from celery import shared_task
from django.db import connection

from events import partitions, services

logger = logging.getLogger(__name__)


@shared_task(
    name="events.tasks.fold_item_counters",
    acks_late=True,
    autoretry_for=(redis.ConnectionError, redis.TimeoutError),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=120,
    time_limit=180,
)
def fold_item_counters() -> dict[str, Any]:
    """Fold the hourly item counters into the item-features blob; safe to run any number of times."""
    summary = services.item_features_fold()
    return {"items": summary.items, "version": summary.version, "seconds": round(summary.seconds, 3)}


@shared_task(
    name="events.tasks.rebuild_online_state",
    acks_late=True,
    # A rebuild streams every interaction, so it is not retried on failure; serving queues it again when it still
    # finds the online state incomplete (events.services.online_state_rebuild_request), or an operator re-runs it.
    soft_time_limit=3 * 3600,
    time_limit=3 * 3600 + 300,
)
def rebuild_online_state(only_if_incomplete: bool = False) -> dict[str, Any]:
    """Rebuild the online state from Postgres: queued by serving when Redis lost it, or by an operator (e.g. when
    recsys_online_state_errors_total rose). While another rebuild runs this one looks again once that one's lock
    would have expired had it died, so a killed rebuild does not leave serving degraded until someone notices.
    ``only_if_incomplete`` (serving's requests and those second looks): nothing to do if the state is complete once
    this one holds the lock."""
    try:
        summary = services.online_state_rebuild(only_if_incomplete=only_if_incomplete)
    except services.RebuildInProgress as exc:
        # Once the other's lock would have expired had it died (it may have been killed: its request for a rebuild
        # expired, and serving asked for this one).
        later = math.ceil(exc.retry_after) + 5
        rebuild_online_state.apply_async(kwargs={"only_if_incomplete": True}, countdown=later)
        return {"skipped": "another rebuild_online_state is running; looking again later"}
    except (services.RebuildAborted, redis.RedisError) as exc:
        # Left incomplete (a lost lock, a cluster master restarted empty, Redis out at the end): again soon, unless
        # another rebuild (the one that took the lock) finishes the job first.
        logger.error("online_state_rebuild_aborted", extra={"reason": str(exc)})
        later = 5 if isinstance(exc, services.RebuildAborted) else 60
        rebuild_online_state.apply_async(kwargs={"only_if_incomplete": True}, countdown=later)
        return {"aborted": str(exc)}
    finally:
        # Rare and heavy: give the backend (and what the big sorts grew) back rather than keep it for CONN_MAX_AGE.
        connection.close()
    if summary.skipped:
        return {"skipped": "the online state is complete"}
    return {
        "keys_cleared": summary.keys_cleared,
        "owners": summary.owners,
        "history_entries": summary.history_entries,
        "affinity_pairs": summary.affinity_pairs,
        "counter_cells": summary.counter_cells,
        "items_folded": summary.items_folded,
        "seconds": round(summary.seconds, 1),
    }


@shared_task(
    name="events.tasks.partitions_ensure",
    acks_late=True,
    soft_time_limit=600,
    time_limit=660,
)
def partitions_ensure() -> dict[str, Any]:
    """Create the monthly partitions of interactions and impressions ahead of time; a no-op when they exist."""
    return {"created": partitions.partitions_ensure()}
