"""Project-level Celery tasks: the worker heartbeat."""

import time

from celery import shared_task

from kernel import redis_client


@shared_task(name="recsys.tasks.heartbeat")
def heartbeat() -> None:
    """Record that a worker is alive and consuming; /readyz reports its age."""
    redis_client.get().set(redis_client.WORKER_HEARTBEAT_KEY, f"{time.time():.3f}", ex=3600)
