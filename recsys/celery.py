"""The Celery application: broker and results on Redis, tasks discovered from every app, beat from recsys.beat."""

import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")

app = Celery("recsys")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.beat_schedule_filename = None
app.autodiscover_tasks()


def _load_beat_schedule() -> None:
    from recsys.beat import BEAT_SCHEDULE

    app.conf.beat_schedule = BEAT_SCHEDULE


app.on_after_configure.connect(lambda sender, **kwargs: _load_beat_schedule(), weak=False)


def _configure_logging(**kwargs: object) -> None:
    """Django's LOGGING for the worker (and each of its pool processes) and beat, as for every other process.

    Without a receiver of this signal Celery configures logging itself: the root logger at its ``--loglevel``
    (WARNING when not given, so LOG_LEVEL and every INFO event were lost, even with worker_hijack_root_logger off)
    with its own format (no extra fields). With it Celery leaves logging alone, so ``LOG_LEVEL`` and ``LOG_FORMAT``
    decide and ``--loglevel`` has no effect."""
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)


setup_logging.connect(_configure_logging, weak=False)
