"""Merchandising use cases: saving rules (so serving sees them at once), what a rule touches, and the
side-by-side "preview as customer" with rules on and off."""

from __future__ import annotations

import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from catalog.models import Item
from events import keys
from events import selectors as event_selectors
from ranking import rules, serving
from ranking.models import BusinessRule
from ranking.rerank import Rule

PREVIEW_ITEMS = 20


def business_rule_save(*, rule: BusinessRule, user_id: int | None) -> BusinessRule:
    """Save a rule (validated by the model's constraints) and tell every serving process to reload rules."""
    rule.updated_by_id = user_id
    with transaction.atomic():
        rule.save()
        transaction.on_commit(rules.version_bump)
    return rule


# The fields a published draft carries over onto the rule it changes (``replaces``).
RULE_FIELDS = (
    "name", "kind", "target", "item", "category", "brand", "weight", "position", "surfaces", "starts_at", "ends_at",
    "enabled",
)  # fmt: skip


def business_rule_publish(*, rule: BusinessRule, user_id: int | None) -> BusinessRule:
    """Make a draft live. A draft that changes a published rule (``replaces``) is copied onto that rule (which keeps
    its id and history) and removed; otherwise the draft itself becomes published. The published rule."""
    with transaction.atomic():
        rule = BusinessRule.objects.select_for_update().get(pk=rule.pk)
        if rule.replaces_id is not None:
            target = BusinessRule.objects.select_for_update().get(pk=rule.replaces_id)
            for name in RULE_FIELDS:
                setattr(target, name, getattr(rule, name))
            target.name = target.name.removesuffix(" (draft)")
            target.status = BusinessRule.Status.PUBLISHED
            rule.delete()
            rule = target
        rule.status = BusinessRule.Status.PUBLISHED
        return business_rule_save(rule=rule, user_id=user_id)


def business_rule_draft_of(*, rule: BusinessRule, user_id: int | None) -> BusinessRule:
    """A draft copy of a published rule, to change and try before it replaces the rule."""
    draft = BusinessRule(**{name: getattr(rule, name) for name in RULE_FIELDS})
    draft.name = f"{rule.name} (draft)"[:200]
    draft.status = BusinessRule.Status.DRAFT
    draft.replaces = rule
    return business_rule_save(rule=draft, user_id=user_id)


def business_rule_delete(*, rule: BusinessRule) -> None:
    rule.delete()  # the rules version moves on commit (ranking.apps: every deletion of a rule, cascades included)


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


# Surfaces whose lists hang off an item (the item endpoints' service), not off a customer.
ITEM_SURFACES = ("similar", "bought_together")
CUSTOMER_SURFACES = ("home", "item", "cart", "category")
BUILTIN_SURFACES = (*CUSTOMER_SURFACES, *ITEM_SURFACES, "because_you_viewed")


def pin_warnings(rule: BusinessRule) -> list[str]:
    """A pin no list can show where it asks (past the longest list the API serves), and other pins asking for the
    same position on a surface and at a time this one is in force: the re-ranker gives the slot to the older rule
    (``ranking.rerank``, pins in ``(position, rule id)`` order) and moves the other to the next free slot, which
    the merchandiser should hear when saving, not find in a preview (an eighth tester, 6 December)."""
    if rule.kind != "pin" or not rule.position:
        return []
    if rule.position > serving.MAX_COUNT:
        return [
            f"Position {rule.position} is past the longest list the API serves ({serving.MAX_COUNT} items): "
            "this pin will not show."
        ]
    if not rule.enabled:
        return []
    # A draft that changes a published rule is published under that rule's id (business_rule_publish).
    served_id = rule.replaces_id or rule.pk
    warnings = []
    for other in _competing_pins(rule):
        first, second = (other, rule) if served_id is None or other.pk < served_id else (rule, other)
        if rule.surfaces and other.surfaces:
            surfaces = sorted(set(rule.surfaces) & set(other.surfaces))
        else:
            surfaces = list(rule.surfaces or other.surfaces)
        where = f"surface {', '.join(surfaces)}" if surfaces else "every surface"
        warnings.append(
            f"Pin “{other.name}” (#{other.pk}) also asks for position {rule.position} on {where}: the older rule "
            f"“{first.name}” takes it and “{second.name}” moves to the next free position."
        )
    return warnings


def _competing_pins(rule: BusinessRule) -> list[BusinessRule]:
    """Published, enabled pins at ``rule``'s position whose surfaces and schedule overlap it (not the rule a draft
    replaces, which publishing it removes)."""
    others = BusinessRule.objects.filter(
        kind=BusinessRule.Kind.PIN, position=rule.position, enabled=True, status=BusinessRule.Status.PUBLISHED
    ).exclude(pk=rule.pk)
    if rule.replaces_id is not None:
        others = others.exclude(pk=rule.replaces_id)
    if rule.surfaces:
        others = others.filter(Q(surfaces=[]) | Q(surfaces__overlap=rule.surfaces))
    # From now on: a pin that has ended competes with nothing.
    from_ = max(rule.starts_at, timezone.now()) if rule.starts_at is not None else timezone.now()
    others = others.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=from_))
    if rule.ends_at is not None:
        others = others.filter(Q(starts_at__isnull=True) | Q(starts_at__lt=rule.ends_at))
    return list(others.order_by("pk")[:5])


def surface_warnings(surfaces: Sequence[str]) -> list[str]:
    """What a merchandiser should hear about a rule's (or experiment's) surfaces: names the platform serves under
    another case, and names nothing serves yet (no built-in list, experiment or surface default). Such a rule is
    kept (a storefront may be about to ask for a new surface) but applies to nothing until one does; "hoem" and
    "Home" were saved without a word (an eighth tester, 6 December)."""
    from experiments.services import surface_known  # the experiments' snapshot, no query

    warnings = []
    for surface in surfaces:
        if surface in BUILTIN_SURFACES or surface_known(surface):
            continue
        same = [known for known in BUILTIN_SURFACES if known.lower() == surface.strip().lower()]
        if same:
            warnings.append(f"Surface “{surface}” is not “{same[0]}”: surface names are case-sensitive.")
        else:
            warnings.append(
                f"No list is served on surface “{surface}” yet (the built-in surfaces are "
                f"{', '.join(BUILTIN_SURFACES)}): the rule applies once a storefront asks for it."
            )
    return warnings


PICKER_CUSTOMERS = 50
PICKER_SCAN = 2_000  # the latest interactions the picker's customers come from


@dataclass(frozen=True)
class RuleEffect:
    """A rule that applies to the previewed surface and touches at least one item of either list."""

    rule_id: int
    name: str
    kind: str
    fired: bool  # applied: reported by the re-ranker (boosts, buries, pins), or it kept an item out (blocks, buries)
    item_ids: tuple[str, ...]  # items of either list it targets, in list order
    note: str = ""  # why a pin in force is not in the list


@dataclass(frozen=True)
class PreviewCard:
    item: serving.RecommendedItem
    rules: tuple[str, ...]  # names of the rules that target it


@dataclass(frozen=True)
class Preview:
    with_rules: serving.RecommendationList
    without_rules: serving.RecommendationList | None  # None on the item surfaces: their endpoints always apply rules
    rules: tuple[RuleEffect, ...] = ()
    with_cards: tuple[PreviewCard, ...] = ()
    without_cards: tuple[PreviewCard, ...] = ()
    anchor_item_id: str = ""


def preview_as_customer(
    *, customer_id: str, session_id: str = "", surface: str = "home", count: int = 10, anchor_item_id: str = ""
) -> Preview:
    """The live list for a customer (or nobody) with the rules applied and switched off, each with its pipeline
    trace, and which rules touch which items. On the item surfaces (``ITEM_SURFACES``) the list is the item
    endpoints' for ``anchor_item_id`` (raises ``serving.UnknownItem``), with rules only. Not logged as impressions:
    a preview is not traffic."""
    without: serving.RecommendationList | None = None
    if surface in ITEM_SURFACES:
        lookup = serving.similar_items if surface == "similar" else serving.bought_together
        with_rules = lookup(item_id=anchor_item_id, count=count, log_impression=False)
    else:
        base = serving.RecommendRequest(
            customer_id=customer_id, session_id=session_id, surface=surface, count=count, debug=True,
            log_impression=False,
        )  # fmt: skip
        with_rules = serving.recommend(base)
        without = serving.recommend(
            serving.RecommendRequest(**{**base.__dict__, "rules": False})  # type: ignore[arg-type]
        )
    shown = [item.item_id for item in with_rules.items]
    kept_out = {item.item_id for item in (without.items if without else ())} - set(shown)
    shown += [item.item_id for item in (without.items if without else ()) if item.item_id in kept_out]
    debug = with_rules.debug or {}
    fired = set(debug.get("rules_fired") or ())
    skipped = {int(rule_id) for rule_id in debug.get("skipped_pins") or ()}
    effects = _rule_effects(
        surface=surface, item_ids=shown, fired=fired, kept_out=kept_out, skipped=skipped,
        owner=keys.owner_for(customer_id=customer_id, session_id=session_id) if customer_id or session_id else "",
        count=count, listed=[item.item_id for item in with_rules.items],
    )  # fmt: skip
    names: dict[str, list[str]] = {}
    for effect in effects:
        for item_id in effect.item_ids:
            names.setdefault(item_id, []).append(effect.name)

    def cards(result: serving.RecommendationList | None) -> tuple[PreviewCard, ...]:
        items = result.items if result else ()
        return tuple(PreviewCard(item, tuple(names.get(item.item_id, ()))) for item in items)

    return Preview(
        with_rules=with_rules, without_rules=without, rules=effects, with_cards=cards(with_rules),
        without_cards=cards(without), anchor_item_id=anchor_item_id,
    )  # fmt: skip


def _rule_effects(
    *,
    surface: str,
    item_ids: list[str],
    fired: set[int],
    kept_out: AbstractSet[str] = frozenset(),
    skipped: AbstractSet[int] = frozenset(),
    owner: str = "",
    count: int = 10,
    listed: Sequence[str] = (),
) -> tuple[RuleEffect, ...]:
    """The rules in force on ``surface`` now (serving's own snapshot, ``rules.active_rules``) that target one of
    ``item_ids`` or are pins the re-ranker ``skipped``, with their names and, for a skipped pin, why its item is not
    in the list. ``kept_out``: items of the rules-off list the rules-on list lacks (a block or bury that did that
    was applied, though the re-ranker reports only the rules that moved a listed item)."""
    rules_now = rules.active_rules(surface=surface, now=time.time())
    if not rules_now or not (item_ids or skipped):
        return ()
    rows = {
        external_id: (pk, category_id, brand_id)
        for external_id, pk, category_id, brand_id in Item.objects.filter(external_id__in=item_ids).values_list(
            "external_id", "pk", "category_id", "brand_id"
        )
    }
    column = {"item": 0, "category": 1, "brand": 2}
    effects = [
        (rule, tuple(i for i in item_ids if i in rows and rows[i][column[rule.target]] == rule.target_value))
        for rule in rules_now
    ]
    effects = [
        (rule, touched) for rule, touched in effects if touched or rule.rule_id in fired or rule.rule_id in skipped
    ]
    names = dict(BusinessRule.objects.filter(pk__in=[rule.rule_id for rule, _ in effects]).values_list("pk", "name"))
    listed_pks = {rows[i][0] for i in listed if i in rows}
    return tuple(
        RuleEffect(
            rule.rule_id, names.get(rule.rule_id, f"rule {rule.rule_id}"), rule.kind,
            rule.rule_id in fired or (rule.kind in ("block", "bury") and bool(kept_out.intersection(touched))),
            touched, _why_skipped(rule, owner, count, listed_pks) if rule.rule_id in skipped else "",
        )
        for rule, touched in effects
    )  # fmt: skip


def _why_skipped(rule: Rule, owner: str, count: int, listed_pks: AbstractSet[int]) -> str:
    """Why a pin in force is not placed: the re-ranker places a pin only at a position inside the list, only once
    per item, and only on a surviving candidate."""
    if rule.position is not None and rule.position >= count:
        return f"not placed: position {rule.position + 1} is past this list's {count} items"
    item_pk = rule.target_value
    if item_pk in listed_pks:
        return "not placed at its position: its item is in the list already (by its score, or another pin)"
    row = Item.objects.filter(pk=item_pk).values("active", "in_stock").first()
    if row is None:
        return "not placed: its item no longer exists"
    if not row["active"]:
        return "not placed: its item is inactive"
    if not row["in_stock"]:
        return "not placed: its item is out of stock"
    if owner:
        had, _ = event_selectors.had_from_db(owner)
        if item_pk in set(had.tolist()):
            return "not placed: this customer has bought or rated its item (purchased and rated items are left out)"
        dismissed, _ = event_selectors.dismissed_from_db(owner)
        if item_pk in set(dismissed.tolist()):
            return 'not placed: this customer said "not interested" in its item'
    return "not placed: its item is left out of this list (another rule blocks it, or the request excludes it)"


def preview_customers(*, limit: int = PICKER_CUSTOMERS) -> list[str]:
    """Customers for the preview's picker: the most recently active, from the latest ``PICKER_SCAN`` interactions
    (one bounded index scan, whatever the table's size)."""
    return event_selectors.recently_active_customer_ids(scan=PICKER_SCAN, limit=limit)
