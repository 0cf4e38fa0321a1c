"""Catalog use cases: upsert and deactivate items, upsert customers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import redis
from django.db import transaction
from django.utils import timezone

from catalog.models import Brand, Category, Customer, Item
from kernel import redis_client

logger = logging.getLogger(__name__)

# Bumped after every change to items: serving processes keep item attributes in memory and drop them when it moves.
CATALOG_VERSION_KEY = "catalog:version"
# Bumped after every change to a customer's opt-out: serving keeps the set of opted-out ids in memory.
OPT_OUT_VERSION_KEY = "catalog:opt_out_version"


def _bump_on_commit(key: str) -> None:
    def bump() -> None:
        try:
            redis_client.get().incr(key)
        except redis.RedisError:
            logger.warning("catalog_version_bump_failed", exc_info=True, extra={"key": key})

    transaction.on_commit(bump)


def catalog_version_bump() -> None:
    """Tell every serving process that item attributes changed (after the transaction commits)."""
    _bump_on_commit(CATALOG_VERSION_KEY)


def opt_out_version_bump() -> None:
    """Tell every serving process that a customer's opt-out changed (after the transaction commits)."""
    _bump_on_commit(OPT_OUT_VERSION_KEY)


@dataclass(frozen=True)
class ItemData:
    title: str
    description: str = ""
    category: str | None = None
    brand: str | None = None
    price: Decimal | None = None
    in_stock: bool = True
    active: bool = True
    tags: tuple[str, ...] = ()
    attributes: dict[str, Any] | None = None
    created_at: datetime | None = None


def category_get_or_create(*, external_id: str, name: str | None = None) -> Category:
    category, _ = Category.objects.get_or_create(external_id=external_id, defaults={"name": name or external_id})
    return category


def brand_get_or_create(*, external_id: str, name: str | None = None) -> Brand:
    brand, _ = Brand.objects.get_or_create(external_id=external_id, defaults={"name": name or external_id})
    return brand


@transaction.atomic
def item_upsert(*, external_id: str, data: ItemData) -> tuple[Item, bool]:
    """Create or fully replace an item (PUT semantics); categories and brands named by id are created on demand."""
    defaults: dict[str, Any] = {
        "title": data.title,
        "description": data.description,
        "category": category_get_or_create(external_id=data.category) if data.category else None,
        "brand": brand_get_or_create(external_id=data.brand) if data.brand else None,
        "price": data.price,
        "in_stock": data.in_stock,
        "active": data.active,
        "tags": list(data.tags),
        "attributes": data.attributes or {},
    }
    if data.created_at is not None:
        defaults["created_at"] = data.created_at
    catalog_version_bump()
    return Item.objects.update_or_create(external_id=external_id, defaults=defaults)


def item_deactivate(*, external_id: str) -> bool:
    """Deactivate rather than delete: interactions keep pointing at the item and it is never recommended again."""
    changed = Item.objects.filter(external_id=external_id).update(active=False, updated_at=timezone.now()) > 0
    if changed:
        catalog_version_bump()
    return changed


def customer_upsert(
    *, external_id: str, attributes: dict[str, Any] | None = None, personalisation_opt_out: bool | None = None
) -> tuple[Customer, bool]:
    defaults: dict[str, Any] = {}
    if attributes is not None:
        defaults["attributes"] = attributes
    if personalisation_opt_out is not None:
        defaults["personalisation_opt_out"] = personalisation_opt_out
        opt_out_version_bump()
    return Customer.objects.update_or_create(external_id=external_id, defaults=defaults)
