from typing import Any

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete


def _rule_deleted(**_: Any) -> None:
    """A rule deleted by a cascade (its item, category or brand deleted) moves the rules version like any rule change:
    a pin of a deleted item stayed in cached lists until some other rule changed (found 5 December)."""
    from ranking import rules

    transaction.on_commit(rules.version_bump)


class RankingConfig(AppConfig):
    name = "ranking"

    def ready(self) -> None:
        post_delete.connect(_rule_deleted, sender="ranking.BusinessRule", dispatch_uid="ranking.rule_deleted")
