"""Catalog use cases: upsert and deactivate items, upsert customers."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from django.db import transaction
from django.utils import timezone

from catalog import erasure, signals
from catalog.models import Brand, Category, Customer, Item
from kernel.versions import bump_on_commit

logger = logging.getLogger(__name__)

# Bumped after every change to items: serving processes keep item attributes in memory and drop them when it moves.
CATALOG_VERSION_KEY = "catalog:version"
# Bumped after every change to a customer's opt-out: serving keeps the set of opted-out ids in memory.
OPT_OUT_VERSION_KEY = "catalog:opt_out_version"


def catalog_version_bump() -> None:
    """Tell every serving process that item attributes changed (after the transaction commits)."""
    bump_on_commit(CATALOG_VERSION_KEY)


def opt_out_version_bump() -> None:
    """Tell every serving process that a customer's opt-out changed (after the transaction commits)."""
    bump_on_commit(OPT_OUT_VERSION_KEY)


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
    customer, created = Customer.objects.update_or_create(external_id=external_id, defaults=defaults)
    if created:
        _customers_created_on_commit({customer.external_id: customer.pk})
    return customer, created


def _customers_created_on_commit(customers: Mapping[str, int]) -> None:
    """Send ``catalog.signals.customers_created`` for ``customers`` once the current transaction commits (at once
    outside one; never when it rolls back)."""
    created = dict(customers)
    transaction.on_commit(
        lambda: signals.customers_created.send_robust(sender=Customer, customers=created), robust=True
    )


def customer_pks_get_or_create(
    *,
    external_ids: Iterable[str],
    created_at: datetime | Mapping[str, datetime],
    cursor: psycopg.Cursor[Any],
    locked: bool = True,
) -> dict[str, int]:
    """Primary keys of the customers, creating the unknown ones, except erased ids (absent from the result): the
    one place besides ``customer_upsert`` that writes the customer table (events create their customers). Runs on
    the caller's psycopg cursor, in its transaction.

    Selects first: almost every event names a known customer, and ``INSERT ... ON CONFLICT DO NOTHING`` on a
    known one would still burn a sequence value and a speculative index probe; the rows found are locked against an
    erasure until the caller's transaction ends (below; ``locked=False``: not, for a caller that retries its
    transaction when the customer's foreign key fails at COMMIT, as the API's event ingestion does). Missing ids
    are inserted in sorted order (concurrent requests lock them in one order; new customers are numbered in that
    order) and those another request created meanwhile are selected again, by a new statement that sees its commit.
    ``created_at``: one time for all, or each id's own (a bulk import: its earliest event). The rows it creates are
    announced after the caller's commit (``catalog.signals.customers_created``).
    """
    wanted = sorted(set(external_ids) - {""})
    if not wanted:
        return {}
    # FOR KEY SHARE: an erasure (which locks the row FOR UPDATE, then deletes it) waits for this transaction, or this
    # waits for it and then finds the row gone and the id erased. A plain read let both go on: the events were
    # inserted for a customer deleted meanwhile, and the deferred foreign key failed the whole batch at COMMIT (a
    # 503; found by a fifth tester, 5 December).
    select = "SELECT external_id, id FROM catalog_customer WHERE external_id = ANY(%b::text[])"
    if locked:
        select += " FOR KEY SHARE"
    cursor.execute(select, [wanted])
    found: dict[str, int] = dict(cursor.fetchall())
    missing = [external_id for external_id in wanted if external_id not in found]
    if missing:
        erased = erasure.erased_ids(missing)
        missing = [external_id for external_id in missing if external_id not in erased]
    if missing:
        times = [created_at[x] for x in missing] if isinstance(created_at, Mapping) else [created_at] * len(missing)
        cursor.execute(
            """INSERT INTO catalog_customer (external_id, created_at, attributes, personalisation_opt_out)
               SELECT x, t, '{}', false FROM unnest(%b::text[], %b::timestamptz[]) AS u(x, t) ORDER BY x
               ON CONFLICT (external_id) DO NOTHING
               RETURNING external_id, id""",
            [missing, times],
        )
        created = dict(cursor.fetchall())
        found.update(created)
        if created:
            _customers_created_on_commit(created)
        raced = [external_id for external_id in missing if external_id not in found]
        if raced:
            cursor.execute(select, [raced])
            found.update(cursor.fetchall())
    return found
