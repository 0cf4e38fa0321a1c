"""Settings of the Celery workers that tests/reliability/test_worker_killed.py starts and kills: the tests' settings
with the broker's visibility timeout shortened to ``KILLABLE_VISIBILITY_TIMEOUT`` seconds, so that the test can wait
it out (the project's is 4 hours). Set before the worker connects: its broker connection reads it once."""

import os

from recsys.settings.test import *  # noqa: F403
from recsys.settings.test import CELERY_BROKER_TRANSPORT_OPTIONS

CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,
    "visibility_timeout": float(os.environ["KILLABLE_VISIBILITY_TIMEOUT"]),
}
