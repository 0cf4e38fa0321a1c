"""Celery tasks of the privacy app (the default queue): thin, idempotent, each calls one service."""

from __future__ import annotations

import redis
from celery import shared_task

from privacy import services


@shared_task(
    name="privacy.tasks.forget_erased_owner",
    acks_late=True,
    autoretry_for=(redis.ConnectionError, redis.TimeoutError),
    retry_backoff=True,
    max_retries=5,
    ignore_result=True,
)
def forget_erased_owner(customer_id: str) -> bool:
    """The erasure's last Redis clean-up, a few seconds after it (privacy.services.customer_erase)."""
    return services.erased_owner_forget(customer_id=customer_id)
