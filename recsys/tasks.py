"""Project-level Celery tasks: the worker heartbeat and the recommendation quality refresh."""

import time
from typing import Any

import redis
from celery import shared_task
from django.db import InterfaceError, OperationalError

from recsys import quality, redis_client


@shared_task(name="recsys.tasks.heartbeat")
def heartbeat() -> None:
    """Record that a worker is alive and consuming; /readyz reports its age."""
    redis_client.get().set(redis_client.WORKER_HEARTBEAT_KEY, f"{time.time():.3f}", ex=3600)


@shared_task(
    name="recsys.tasks.quality_refresh",
    acks_late=True,
    # A periodic task: a run that fails on a connection is simply superseded by the next one five minutes later,
    # so one quick retry at most, never a pile-up of stale runs.
    autoretry_for=(OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError),
    max_retries=1,
    default_retry_delay=30,
    soft_time_limit=240,
    time_limit=280,
)
def quality_refresh() -> dict[str, Any]:
    """Recompute the quality gauges and today's (and, after midnight, yesterday's) ``QualitySnapshot``."""
    return quality.quality_refresh().as_dict()
