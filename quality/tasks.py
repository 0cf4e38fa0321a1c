"""The recommendation quality refresh, every five minutes from the beat (its name is kept from before the move out
of recsys/, so beat schedules and queued messages still find it)."""

from typing import Any

import redis
from celery import shared_task
from django.db import InterfaceError, OperationalError

from quality import services as quality


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
