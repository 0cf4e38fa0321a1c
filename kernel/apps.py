"""The shared kernel: Redis, auth and API keys, throttling, parsing, validation, CSV import, metrics.

Imports no app of ours."""

from django.apps import AppConfig


class KernelConfig(AppConfig):
    name = "kernel"
    verbose_name = "API access"

    def ready(self) -> None:
        from kernel import (
            middleware,  # noqa: F401 - registers its system check
            urls,  # noqa: F401 - registers the "id" path converter the API's routes use
        )
