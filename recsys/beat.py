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
    # Impressions queue in Redis on the request path; this drains them into Postgres so results and attribution
    # are at most seconds behind. An interval, not cron: crontab cannot go below a minute, and a drain has no
    # wall-clock alignment to keep, so drift after a restart is harmless. One flusher at a time (Redis lock).
    "flush-impressions": {
        "task": "experiments.tasks.flush_impressions",
        "schedule": 10.0,
        # A drain that waited longer than a few periods is superseded by the next one.
        "options": {"expires": 30},
    },
    # Bandit experiments move traffic toward their better arms; every 15 minutes lets evidence accumulate between
    # moves while still reacting within the hour. The task fans out one reweight per running bandit.
    "bandit-reweight": {
        "task": "experiments.tasks.bandit_reweight_running",
        "schedule": crontab(minute="*/15"),
        "options": {"expires": 600},
    },
    # A new model version every night at 03:00 UTC, when traffic is lowest; it is activated only if its validation
    # NDCG is not worse than the active version's. A run that could not start within two hours would run into the
    # morning's traffic: skip it, the next night trains anyway.
    "train-model-nightly": {
        "task": "ranking.tasks.train_model",
        "schedule": crontab(hour=3, minute=0),
        "options": {"expires": 2 * 3600},
    },
    # The active version's popularity and trending recomputed from Postgres every hour: the model is retrained
    # nightly, but what sells this week moves faster. Off the hour, away from the top-of-hour crowd.
    "refresh-trending-hourly": {
        "task": "ranking.tasks.refresh_trending",
        "schedule": crontab(minute=17),
        "options": {"expires": 50 * 60},
    },
    # Freshness, measured without traffic: the probe serves a list to a reserved session, dismisses its first item
    # and checks the next list no longer has it (docs/events.md); "stale" results page through
    # RecsysFreshnessProbeFailing. Every minute: a silent staleness is caught within minutes, at a cost of two lists.
    "freshness-probe": {
        "task": "ranking.tasks.freshness_probe",
        "schedule": crontab(minute="*"),
        "options": {"expires": 50},
    },
    # CTR, conversion, coverage, diversity and freshness gauges for Prometheus and today's dashboard row. Five
    # minutes: alerts react within a quarter of an hour, and each run reads only the last 24 h of served lists (the
    # 7-day coverage at most hourly). A run older than its period is superseded by the next one.
    "quality-refresh": {
        "task": "recsys.tasks.quality_refresh",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 240},
    },
    # Interactions and impressions are partitioned by month (events.partitions); the coming two months' partitions
    # are created ahead, so inserts never wait on DDL nor land in the default partition. Daily (off the hour, after
    # the nightly training) leaves a month of missed runs before anything lands in the default partition.
    "partitions-ensure-daily": {
        "task": "events.tasks.partitions_ensure",
        "schedule": crontab(hour=5, minute=41),
        "options": {"expires": 12 * 3600},
    },
}
