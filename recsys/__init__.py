"""The project package: settings, root URLs, the Celery app, API authentication, health and local servers."""

from recsys.celery import app as celery_app

__all__ = ["celery_app"]
