"""The Celery application: broker and results on Redis, tasks discovered from every app, beat from recsys.beat."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings.dev")

app = Celery("recsys")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.beat_schedule_filename = None
app.autodiscover_tasks()


def _load_beat_schedule() -> None:
    from recsys.beat import BEAT_SCHEDULE

    app.conf.beat_schedule = BEAT_SCHEDULE


app.on_after_configure.connect(lambda sender, **kwargs: _load_beat_schedule(), weak=False)
