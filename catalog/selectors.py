"""Catalog reads that return model rows or plain data."""

from __future__ import annotations

from catalog.models import Customer, Item


def item_get(*, external_id: str) -> Item | None:
    return Item.objects.select_related("category", "brand").filter(external_id=external_id).first()


def customer_get(*, external_id: str) -> Customer | None:
    return Customer.objects.filter(external_id=external_id).first()
