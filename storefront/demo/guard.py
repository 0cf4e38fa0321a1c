"""The demo's commands refuse a deployment that turned the demo off (``DEMO_ENABLED``, off in production)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError


def refuse_without_demo(command: str) -> None:
    """Raise :class:`CommandError` when the demo is off: ``runstack`` would create an admin/admin superuser and demo
    API keys, ``load_demo`` and ``replay_demo_traffic`` would write a retailer's 2010 data into the shop's."""
    if not settings.DEMO_ENABLED:
        raise CommandError(
            f"{command} sets up the local demo and is refused where the demo is off (DEMO_ENABLED=0, the default of "
            "recsys.settings.prod). A deployment runs migrate, gunicorn, the Celery worker and beat as "
            "docs/operations.md describes; set DEMO_ENABLED=1 only on a throwaway demo host."
        )
