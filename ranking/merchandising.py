"""Merchandising use cases: saving rules (so serving sees them at once), what a rule touches, and the
side-by-side "preview as customer" with rules on and off."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q

from catalog.models import Item
from ranking import rules, serving
from ranking.models import BusinessRule

PREVIEW_ITEMS = 20


def business_rule_save(*, rule: BusinessRule, user_id: int | None) -> BusinessRule:
    """Save a rule (validated by the model's constraints) and tell every serving process to reload rules."""
    rule.updated_by_id = user_id
    with transaction.atomic():
        rule.save()
        transaction.on_commit(rules.version_bump)
    return rule


def business_rule_delete(*, rule: BusinessRule) -> None:
    with transaction.atomic():
        rule.delete()
        transaction.on_commit(rules.version_bump)


@dataclass(frozen=True)
class RuleReach:
    """The items a rule touches: how many (estimated beyond 1,000) and the first few by id."""

    count: int
    more: bool
    sample: tuple[tuple[str, str, str], ...]  # (item id, title, category name)


def business_rule_reach(*, rule: BusinessRule) -> RuleReach:
    """Which active items the rule would touch; bounded queries whatever the catalog size."""
    if rule.target == BusinessRule.Target.ITEM:
        condition = Q(pk=rule.item_id)
    elif rule.target == BusinessRule.Target.CATEGORY:
        condition = Q(category_id=rule.category_id)
    else:
        condition = Q(brand_id=rule.brand_id)
    items = Item.objects.filter(condition, active=True)
    ids = list(items.values_list("pk", flat=True)[:1001])
    sample = tuple(
        (row["external_id"], row["title"], row["category__name"] or "")
        for row in items.order_by("pk").values("external_id", "title", "category__name")[:PREVIEW_ITEMS]
    )
    return RuleReach(count=min(len(ids), 1000), more=len(ids) > 1000, sample=sample)


@dataclass(frozen=True)
class Preview:
    with_rules: serving.RecommendationList
    without_rules: serving.RecommendationList


def preview_as_customer(*, customer_id: str, session_id: str = "", surface: str = "home", count: int = 10) -> Preview:
    """The live list for a customer (or nobody) with the rules applied and switched off, each with its pipeline
    trace. Not logged as impressions: a preview is not traffic."""
    base = serving.RecommendRequest(
        customer_id=customer_id, session_id=session_id, surface=surface, count=count, debug=True,
        log_impression=False,
    )  # fmt: skip
    with_rules = serving.recommend(base)
    without = serving.recommend(
        serving.RecommendRequest(**{**base.__dict__, "rules": False})  # type: ignore[arg-type]
    )
    return Preview(with_rules=with_rules, without_rules=without)
