"""Celery tasks of the experiments app: thin and idempotent, each calls one service."""

from __future__ import annotations

import dataclasses
from typing import Any

import redis
from celery import shared_task
from django.db import OperationalError

from experiments import selectors, services

_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OperationalError)


@shared_task(
    name="experiments.tasks.flush_impressions",
    acks_late=True,
    autoretry_for=_TRANSIENT,
    retry_backoff=True,
    max_retries=3,
    # Below services.FLUSH_LOCK_SECONDS, so a flush can never outlive its lock.
    soft_time_limit=60,
    time_limit=120,
)
def flush_impressions() -> dict[str, Any]:
    """Drain queued impressions into Postgres; a replayed batch stores nothing twice."""
    return dataclasses.asdict(services.impressions_flush())


@shared_task(
    name="experiments.tasks.bandit_reweight",
    acks_late=True,
    autoretry_for=_TRANSIENT,
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=120,
    time_limit=180,
)
def bandit_reweight(experiment_id: int) -> list[float] | None:
    """Move one bandit's traffic toward its better arms; a no-op when the experiment is gone or no longer running."""
    weights = services.bandit_reweight(experiment_id=experiment_id)
    return list(weights) if weights is not None else None


@shared_task(name="experiments.tasks.bandit_reweight_running", acks_late=True, soft_time_limit=30, time_limit=60)
def bandit_reweight_running() -> int:
    """Fan out one ``bandit_reweight`` per running bandit experiment (ids only), so one slow query delays no other."""
    ids = selectors.running_bandit_ids()
    for experiment_id in ids:
        bandit_reweight.delay(experiment_id)
    return len(ids)
