"""The whole Celery beat schedule, cron-style so restarts never drift; each entry says why it exists."""

from celery.schedules import crontab

BEAT_SCHEDULE: dict[str, dict] = {
    # Readiness of the worker is checked through this heartbeat: /readyz reads its timestamp from Redis.
    "worker-heartbeat": {
        "task": "recsys.tasks.heartbeat",
        "schedule": crontab(minute="*"),
        "options": {"expires": 50},
    },
    # Trending and CTR features (24 h / 7 d counts, trend score) are folded from the hourly item counters; five
    # minutes keeps "trending" fresh while web processes reload the blob at most that often.
    "fold-item-counters": {
        "task": "events.tasks.fold_item_counters",
        "schedule": crontab(minute="*/5"),
        # A fold missed by more than its period is superseded by the next one.
        "options": {"expires": 240},
    },
}
