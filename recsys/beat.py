"""The whole Celery beat schedule, cron-style so restarts never drift; each entry says why it exists."""

from celery.schedules import crontab

BEAT_SCHEDULE: dict[str, dict] = {
    # Readiness of the worker is checked through this heartbeat: /readyz reads its timestamp from Redis.
    "worker-heartbeat": {
        "task": "recsys.tasks.heartbeat",
        "schedule": crontab(minute="*"),
        "options": {"expires": 50},
    },
}
