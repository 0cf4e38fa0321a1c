"""Customer data rights across every app: export, erasure (with its audit trail), opt-out."""

from django.apps import AppConfig


class PrivacyConfig(AppConfig):
    name = "privacy"
    verbose_name = "Privacy"
