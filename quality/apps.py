"""The recommendation quality dashboard: daily figures, the refresh task, the admin pages."""

from django.apps import AppConfig


class QualityConfig(AppConfig):
    name = "quality"
    verbose_name = "Quality"
